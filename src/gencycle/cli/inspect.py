"""`gencycle info MODEL`, `gencycle attention MODEL TEXT`: look inside a model."""

from __future__ import annotations

from ..assets import DEFAULT_MODEL


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="print a model's card: family, shape, context window, size")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="model folder, .gguf file or packaged name")
    info.set_defaults(func=run_info)

    attention = subparsers.add_parser("attention", help="draw one layer's attention weights, one heatmap per head")
    attention.add_argument("model", help="model folder, .gguf file or packaged name")
    attention.add_argument("text")
    attention.add_argument("--layer", type=int, default=0, help="layer index (negative counts from the end)")
    attention.add_argument("--heads", type=int, nargs="*", help="only these heads (default: all)")
    attention.add_argument("--out", default="attention.png", help="PNG file to write")
    attention.set_defaults(func=run_attention)


def run_info(args) -> None:
    from .. import load_model
    from ..inspection import format_card, model_card
    print(format_card(model_card(load_model(args.model, device="cpu"))))


def run_attention(args) -> None:
    from .. import load_model, load_tokenizer
    from ..inspection import attention_maps, plot_attention
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    tokens, weights = attention_maps(model, tokenizer, args.text, args.layer)
    path = plot_attention(tokens, weights, args.out, title=f"{args.model}, layer {args.layer}", heads=args.heads)
    print(f"wrote {path} ({len(tokens)} tokens, {weights.shape[0]} heads)")
