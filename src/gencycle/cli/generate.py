"""`gencycle generate [MODEL] PROMPT` and `gencycle chat [MODEL]`: text generation in the terminal.

Both default to the embedded SmolLM2 model and stream tokens as they arrive. Decoding is greedy
(or beam search with --num-beams) unless --do-sample is given; --temperature, --top-k and --top-p
shape the sampling, and without --do-sample they are ignored with a warning, as `transformers` and
`LLM.generate` do. `generate` applies the model's chat template when it has one (--raw sends the
prompt as is, so --system needs the template). Prompts must be UTF-8 text.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..assets import DEFAULT_MODEL
from ..errors import OptionError, UserError
from .options import number

def _add_generation_options(parser) -> None:
    group = parser.add_argument_group("generation (the model's generation_config.json gives the defaults)")
    group.add_argument("--max-new-tokens", type=number(int),
                       help="tokens to generate at most, >= 1 (default: 256, or the model's)")
    group.add_argument("--min-new-tokens", type=number(int), help="EOS is blocked until this many tokens (default: 0)")
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding (default: off)")
    group.add_argument("--temperature", type=number(float),
                       help="with --do-sample: logits / temperature, >= 0; 0 = greedy (default: 1.0)")
    group.add_argument("--top-k", type=number(int),
                       help="with --do-sample: sample among the k most likely tokens; 0 = all (default: 0)")
    group.add_argument("--top-p", type=number(float),
                       help="with --do-sample: nucleus sampling mass in (0, 1]; 1 = off (default: 1.0)")
    group.add_argument("--repetition-penalty", type=number(float),
                       help="> 0; > 1 discourages repeating tokens; 1 = off (default: 1.0)")
    group.add_argument("--no-repeat-ngram-size", type=number(int),
                       help="never repeat an n-gram of this size; 0 = off (default: 0)")
    group.add_argument("--num-beams", type=number(int),
                       help="beam search with this many beams, >= 1; not streamed (default: 1)")
    group.add_argument("--length-penalty", type=number(float),
                       help="beam search: scores are divided by length ** this; 0 = off, negative favours "
                            "shorter beams (default: 1.0)")
    group.add_argument("--stop", action="append", help="stop string, repeatable; it is not printed (default: none)")
    group.add_argument("--seed", type=number(int), help="seeds sampling, >= 0 (default: a fresh seed each run)")
    model = parser.add_argument_group("model")
    model.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                       help="weights dtype (default: fp32; with --do-sample, or around --quantize layers when "
                            "compiled, bf16 where the CPU or GPU has native bf16 matrix products: the chosen "
                            "defaults are printed on stderr)")
    model.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    model.add_argument("--quantize", choices=["int8", "int4"],
                       help="weight-only quantization for inference (default: none)")
    model.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="compiled decoding steps, built ahead of time: much faster tokens/s; the first run per "
                            "model and length bucket compiles (minutes on 2 cores), later runs load the library in "
                            "under a second (default, for a model of >= 10M weights: on with CUDA and Triton; on "
                            "the CPU on for bf16 and --quantize, about 2x eager there, off for fp32, no faster)")
    model.add_argument("--system", help="system message for the chat template (default: none)")


def register(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="complete a prompt, streaming the text")
    generate.add_argument("words", nargs="+", metavar="[MODEL] PROMPT",
                          help=f"model folder, .gguf file or packaged name (default {DEFAULT_MODEL}), then the "
                               "prompt ('-' reads it from stdin)")
    generate.add_argument("--raw", action="store_true", help="do not apply the model's chat template (default: off)")
    generate.add_argument("--num-return-sequences", type=number(int),
                          help="completions to print, >= 1: needs --do-sample or --num-beams >= it (default: 1)")
    _add_generation_options(generate)
    generate.set_defaults(func=run_generate)

    chat = subparsers.add_parser("chat", help="interactive chat with history (/reset, /exit)")
    chat.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                      help=f"model folder, .gguf file or packaged name (default: {DEFAULT_MODEL})")
    _add_generation_options(chat)
    chat.set_defaults(func=run_chat)


def generation_overrides(args) -> dict:
    """Options given on the command line -> GenerationConfig overrides (unset ones keep the defaults),
    checked before the model loads."""
    from ..generation import GenerationConfig
    names = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
             "no_repeat_ngram_size", "num_beams", "length_penalty", "stop", "seed", "num_return_sequences")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.do_sample:
        overrides["do_sample"] = True
    if overrides.get("max_new_tokens", 1) < 1:
        raise OptionError("max_new_tokens", "must be an integer >= 1", overrides["max_new_tokens"])
    if overrides.get("seed", 0) < 0:
        raise OptionError("seed", "must be an integer >= 0", overrides["seed"])
    if overrides.get("min_new_tokens", 0) > overrides.get("max_new_tokens", float("inf")):
        raise OptionError("min_new_tokens", f"must be at most --max-new-tokens ({overrides['max_new_tokens']}): "
                          "generation stops there", overrides["min_new_tokens"])
    for stop in overrides.get("stop") or ():
        utf8(stop, "--stop")
    if getattr(args, "device", None) is not None:
        from ..checkpoints.devices import resolve_device
        resolve_device(args.device)  # "bogus" or a GPU this machine lacks: refused before anything loads
    GenerationConfig(do_sample=overrides.get("num_beams", 1) == 1).replace(**overrides)  # values checked now
    return overrides


def _load(args, overrides: dict):
    """The LLM; sampling settings that its config with `overrides` does not use (no --do-sample, and
    no do_sample in the model's generation_config.json) are dropped from `overrides` with a warning,
    the rule of `LLM.generate` and transformers."""
    from ..generation import LLM
    from ..generation.llm import ignored_settings
    llm = _load_with_defaults(args, sampling=bool(overrides.get("do_sample")))
    config = llm.generation_config.replace(**overrides)
    ignored = ignored_settings(config, overrides)
    if ignored:
        flags = ", ".join("--" + item.replace("_", "-").replace("=", " ") for item in ignored)
        warnings.warn(f"{flags} ignored without --do-sample: decoding is "
                      f"{'beam search' if config.num_beams > 1 else 'greedy'}")
        for item in ignored:
            overrides.pop(item.split("=")[0])
    return llm


def _load_with_defaults(args, sampling: bool):
    """LLM.load with the inference defaults (generation/defaults.py) for what the flags leave open; the
    choice is printed on stderr in one line."""
    from ..generation import LLM
    from ..generation.compiled import compile_decoding
    from ..generation.defaults import inference_defaults, model_elements
    asked = {"device": args.device, "dtype": args.dtype, "compile": args.compile, "quantize": args.quantize,
             "sampling": sampling}
    first = inference_defaults(**asked)
    llm = LLM.load(args.model, dtype=first.dtype, device=first.device, quantize=args.quantize)
    choice = inference_defaults(**asked, model_size=model_elements(llm.model))  # the same choice, and compile?
    if choice.dtype != first.dtype:  # a small quantized model decodes eagerly, with fp32 around its layers
        llm = LLM.load(args.model, dtype=choice.dtype, device=choice.device, quantize=args.quantize)
    if choice.compile:
        compile_decoding(llm.model, packages="auto")  # ahead of time: a later process loads the steps
    print(choice.description, file=sys.stderr, flush=True)
    return llm


def utf8(text: str, what: str) -> str:
    """`text` if it is valid Unicode; bytes that were not UTF-8 (argv / stdin decode them as lone
    surrogates) are refused, naming where they came from."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserError(f"{what} is not UTF-8 text: byte 0x{ord(text[error.start]) - 0xDC00:02x} at character "
                        f"{error.start} (convert it, e.g. with iconv -t utf-8)") from None
    return text


def read_stdin() -> str:
    """Standard input as UTF-8 text, or an error naming the first byte that is not."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "surrogateescape")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"standard input is not UTF-8 text: byte 0x{data[error.start]:02x} at byte {error.start} "
                        "(convert it, e.g. with iconv -t utf-8)") from None
    if not text.strip():
        raise UserError("standard input is empty: give the prompt there, or as an argument")
    return text


def _messages(args, history: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": args.system}] if args.system else []) + history


def _print_stream(deltas) -> str:
    text = []
    for delta in deltas:
        print(delta, end="", flush=True)
        text.append(delta)
    print(flush=True)
    return "".join(text)


def run_generate(args) -> None:
    if len(args.words) > 2:
        raise UserError(f"expected [MODEL] PROMPT, got {len(args.words)} arguments (quote the prompt)")
    args.model, prompt = (DEFAULT_MODEL, *args.words) if len(args.words) == 1 else args.words
    if args.raw and args.system is not None:
        raise UserError("--system goes into the chat template, and --raw sends the prompt without it: "
                        "drop one of them (or write the system text into the prompt)")
    overrides = generation_overrides(args)
    prompt = read_stdin() if prompt == "-" else utf8(prompt, "the prompt")
    if args.system is not None:
        utf8(args.system, "--system")
    if not prompt:
        raise UserError("the prompt is empty")
    llm = _load(args, overrides)
    templated = not args.raw and llm.tokenizer.chat_template is not None
    if args.system is not None and not templated:
        raise UserError(f"{args.model} has no chat template, so --system has nowhere to go; "
                        "write the system text into the prompt")
    messages = _messages(args, [{"role": "user", "content": prompt}])
    if overrides.get("num_beams", 1) > 1 or overrides.get("num_return_sequences", 1) > 1:
        texts = llm.chat(messages, **overrides) if templated else llm.generate(prompt, **overrides)
        texts = [texts] if isinstance(texts, str) else texts
        for i, text in enumerate(texts):
            print(text if len(texts) == 1 else f"[{i + 1}] {text}")
        return
    _print_stream(llm.stream_chat(messages, **overrides) if templated else llm.stream(prompt, **overrides))


def run_chat(args) -> None:
    overrides = generation_overrides(args)
    if args.system is not None:
        utf8(args.system, "--system")
    llm = _load(args, overrides)
    if llm.tokenizer.chat_template is None:
        raise UserError(f"{args.model} has no chat template; use `gencycle generate --raw` instead")
    print(f"chatting with {args.model} (/reset clears the history, /exit quits)", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is refused below, not fatal
    history: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        try:
            utf8(line, "that line")
        except UserError as error:
            print(f"error: {error}; nothing was sent", file=sys.stderr)
            continue
        if line == "/exit":
            return
        if line == "/reset":
            history = []
            print("(history cleared)", file=sys.stderr)
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        try:
            if overrides.get("num_beams", 1) > 1:
                reply = llm.chat(_messages(args, history), **overrides)
                print(reply)
            else:
                reply = _print_stream(llm.stream_chat(_messages(args, history), **overrides))
        except ValueError as error:  # e.g. the conversation outgrew the context window
            history.pop()
            print(f"\nerror: {error} (/reset starts over)", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": reply})
