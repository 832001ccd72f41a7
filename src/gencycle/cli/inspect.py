"""`gencycle info MODEL`, `gencycle attention MODEL TEXT`: look inside a model."""

from __future__ import annotations

from ..assets import DEFAULT_MODEL
from ..errors import OptionError, UserError, check_output
from .options import number


def register(subparsers) -> None:
    from ..inspection import MAX_DRAWN_TOKENS
    info = subparsers.add_parser("info", help="print a model's card: family, shape, context window, size")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                      help=f"model folder, .gguf file or packaged name (default: {DEFAULT_MODEL})")
    info.set_defaults(func=run_info)

    attention = subparsers.add_parser("attention", help="draw one layer's attention weights, one heatmap per head")
    attention.add_argument("model", help="model folder, .gguf file or packaged name")
    attention.add_argument("text", help="the text whose tokens attend to each other (UTF-8)")
    attention.add_argument("--layer", type=number(int), default=0,
                           help="layer index; negative counts from the end (default: 0)")
    attention.add_argument("--heads", type=number(int), nargs="+",
                           help="only these heads, numbered from 0 (default: all)")
    attention.add_argument("--max-tokens", type=number(int), default=MAX_DRAWN_TOKENS,
                           help="draw the first N tokens at most: the image grows with the square of N "
                                f"(default: {MAX_DRAWN_TOKENS})")
    attention.add_argument("--out", default="attention.png",
                           help="image file to write; .png is added when it has no suffix (default: attention.png)")
    attention.set_defaults(func=run_attention)


def run_info(args) -> None:
    from .. import load_model
    from ..inspection import format_card, model_card
    print(format_card(model_card(load_model(args.model, device="cpu"))))


def run_attention(args) -> None:
    from .. import load_model, load_tokenizer
    from ..inspection import attention_maps, image_path, plot_attention
    if args.max_tokens < 1:
        raise OptionError("max_tokens", "must be an integer >= 1", args.max_tokens)
    if args.heads is not None and min(args.heads) < 0:
        raise OptionError("heads", "are numbered from 0", args.heads)
    check_output(args.out, "out", kind="file")  # not an existing folder
    try:
        out = image_path(args.out)  # "noext" -> "noext.png", the file matplotlib writes
    except ValueError as error:
        raise OptionError("out", "", message=str(error)) from None
    check_output(out, "out", kind="file")
    if not args.text.strip():
        raise UserError("the text is empty: give the words whose attention to draw")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    cfg = model.config
    layers = cfg.num_layers if cfg.architecture != "encoder-decoder" else cfg.num_encoder_layers
    if not -layers <= args.layer < layers:
        raise OptionError("layer", "", message=f"layer {args.layer} is out of range: the model has {layers} layers "
                          f"(0..{layers - 1}, or -{layers}..-1 from the end)")
    if args.heads is not None and max(args.heads) >= cfg.num_heads:
        raise OptionError("heads", "", message=f"head {max(args.heads)} is out of range: the model has "
                          f"{cfg.num_heads} heads per layer (0..{cfg.num_heads - 1})")
    total = len(tokenizer.encode(args.text))
    tokens, weights = attention_maps(model, tokenizer, args.text, args.layer, max_tokens=args.max_tokens)
    path = plot_attention(tokens, weights, out, title=f"{args.model}, layer {args.layer}", heads=args.heads,
                          max_tokens=args.max_tokens)
    drawn = f"{len(tokens)} tokens" if total <= len(tokens) else \
        f"the first {len(tokens)} of {total} tokens (--max-tokens raises the cap)"
    print(f"wrote {path} ({drawn}, {len(args.heads) if args.heads else weights.shape[0]} heads)")
