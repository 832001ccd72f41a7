"""`gencycle generate [MODEL] PROMPT` and `gencycle chat [MODEL]`: text generation in the terminal.

Both default to the embedded SmolLM2 model and stream tokens as they arrive. Decoding is
greedy unless a sampling option is given (--do-sample, --temperature > 0, --top-k, --top-p).
`generate` applies the model's chat template when it has one (--raw sends the prompt as is).
"""

from __future__ import annotations

import sys

from ..assets import DEFAULT_MODEL

SAMPLING = ("temperature", "top_k", "top_p")


def _add_generation_options(parser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, help="tokens to generate at most (default 256)")
    group.add_argument("--min-new-tokens", type=int)
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, help="> 0 samples (implies --do-sample); 0 = greedy")
    group.add_argument("--top-k", type=int, help="sample among the k most likely tokens (implies --do-sample)")
    group.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1] (implies --do-sample)")
    group.add_argument("--repetition-penalty", type=float)
    group.add_argument("--no-repeat-ngram-size", type=int)
    group.add_argument("--num-beams", type=int, help="beam search with this many beams (no streaming)")
    group.add_argument("--length-penalty", type=float)
    group.add_argument("--stop", action="append", help="stop string (repeatable); it is not printed")
    group.add_argument("--seed", type=int)
    model = parser.add_argument_group("model")
    model.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights dtype (default fp32)")
    model.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    model.add_argument("--quantize", choices=["int8", "int4"], help="weight-only quantization for inference")
    model.add_argument("--compile", action="store_true",
                       help="compile the decoding step (torch.compile): much faster tokens/s after a first "
                            "compilation of 10-60 s per batch size and length bucket (cached on disk)")
    model.add_argument("--system", help="system message for the chat template")


def register(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="complete a prompt, streaming the text")
    generate.add_argument("words", nargs="+", metavar="[MODEL] PROMPT",
                          help=f"model folder, .gguf file or packaged name (default {DEFAULT_MODEL}), then the "
                               "prompt ('-' reads it from stdin)")
    generate.add_argument("--raw", action="store_true", help="do not apply the model's chat template")
    generate.add_argument("--num-return-sequences", type=int)
    _add_generation_options(generate)
    generate.set_defaults(func=run_generate)

    chat = subparsers.add_parser("chat", help="interactive chat with history (/reset, /exit)")
    chat.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="model folder, .gguf file or packaged name")
    _add_generation_options(chat)
    chat.set_defaults(func=run_chat)


def generation_overrides(args) -> dict:
    """Options given on the command line -> GenerationConfig overrides (unset ones keep the defaults)."""
    names = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
             "no_repeat_ngram_size", "num_beams", "length_penalty", "stop", "seed", "num_return_sequences")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.do_sample or any(name in overrides for name in SAMPLING):
        overrides["do_sample"] = True
    return overrides


def _load(args, overrides: dict):
    from ..generation import LLM, GenerationConfig
    GenerationConfig(do_sample=overrides.get("num_beams", 1) == 1).replace(**overrides)  # fail before loading
    return LLM.load(args.model, dtype=args.dtype, device=args.device, quantize=args.quantize, compile=args.compile)


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
        raise ValueError(f"expected [MODEL] PROMPT, got {len(args.words)} arguments (quote the prompt)")
    args.model, prompt = (DEFAULT_MODEL, *args.words) if len(args.words) == 1 else args.words
    prompt = sys.stdin.read() if prompt == "-" else prompt
    overrides = generation_overrides(args)
    llm = _load(args, overrides)
    templated = not args.raw and llm.tokenizer.chat_template is not None
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
    llm = _load(args, overrides)
    if llm.tokenizer.chat_template is None:
        raise ValueError(f"{args.model} has no chat template; use `gencycle generate --raw` instead")
    print(f"chatting with {args.model} (/reset clears the history, /exit quits)", file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
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
