"""`gencycle prompt` and `gencycle evaluate`: in-context prompts and their comparison on a split.

    gencycle prompt --shots 3 --select similar --index 4         # the prompt it built, then the completion
    gencycle evaluate --shots 0,1,3 --config greedy --config "sample:temperature=0.7,top_p=0.9" \\
        --limit 20 --out runs/eval

MODEL defaults to the embedded SmolLM2 and --data to the shipped dialogue set; a DialogSum
CSV/JSONL file or folder of splits works the same. In-context examples come from --pool-split
of the same folder (or from the file itself, never the query).
"""

from __future__ import annotations

from pathlib import Path

from ..assets import DEFAULT_MODEL

TASKS = ("dialogsum", "dialogsum-flan")  # prompt templates with an "-answered" twin for the examples


def _common(parser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model folder, .gguf file or packaged name (default {DEFAULT_MODEL})")
    parser.add_argument("--task", choices=TASKS, default="dialogsum", help="prompt template (default dialogsum)")
    parser.add_argument("--data", help="DialogSum-format CSV/JSONL file or folder of splits (default: the shipped set)")
    parser.add_argument("--split", default="test", help="split to prompt / evaluate on (default test)")
    parser.add_argument("--pool-split", default="train", help="split the in-context examples come from (default train)")
    parser.add_argument("--select", choices=("first", "random", "similar"), default="first",
                        help="how in-context examples are chosen (similar: MiniLM sentence embeddings)")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--plain", action="store_true", help="send the prompt as is, without the chat template")
    parser.add_argument("--seed", type=int, default=0, help="seeds random selection and sampling")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights dtype (default fp32)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")


def register(subparsers) -> None:
    prompt = subparsers.add_parser("prompt", help="build a zero/one/few-shot prompt for one example and complete it")
    _common(prompt)
    prompt.add_argument("--shots", type=int, default=0, help="in-context examples (default 0)")
    prompt.add_argument("--index", type=int, default=0, help="which example of --split (default 0)")
    prompt.add_argument("--config", default="greedy", help='generation config spec, e.g. "sample:temperature=0.7"')
    prompt.set_defaults(func=run_prompt)

    evaluate = subparsers.add_parser("evaluate", help="score (shots x generation config) variants on a split")
    _common(evaluate)
    evaluate.add_argument("--shots", default="0,1,3", help="comma-separated shot counts (default 0,1,3)")
    evaluate.add_argument("--config", action="append",
                          help='generation config spec, repeatable (default greedy): "greedy", '
                               '"sample:temperature=0.7,top_p=0.9", "beam:num_beams=4"')
    evaluate.add_argument("--limit", type=int, help="evaluate the first N examples only")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--out", default="runs/evaluate", help="folder for the report (default runs/evaluate)")
    evaluate.set_defaults(func=run_evaluate)


def _data(args):
    """(examples of --split, pool of in-context examples)."""
    from ..data import load_dialogsum, load_shipped
    if args.data is None:
        return load_shipped(args.split), load_shipped(args.pool_split)
    path = Path(args.data).expanduser()
    if path.is_dir():
        return load_dialogsum(path, args.split), load_dialogsum(path, args.pool_split)
    records = load_dialogsum(path)  # one file: its records are both the queries and the pool
    return records, records


def _shots(text: str) -> list[int]:
    try:
        shots = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--shots must be comma-separated integers, e.g. 0,1,3; got {text!r}") from None
    if not shots or min(shots) < 0:
        raise ValueError(f"--shots must be integers >= 0, got {text!r}")
    return shots


def _embed_fn(args):
    if args.select != "similar":
        return None
    from ..embeddings import SentenceEncoder
    return SentenceEncoder().encode


def _load(args):
    """The LLM; a model without a chat template gets plain prompts (with a note)."""
    import sys

    from ..generation import LLM
    llm = LLM.load(args.model, dtype=args.dtype, device=args.device)
    if not args.plain and not llm.tokenizer.chat_template:
        print(f"note: {args.model} has no chat template; sending plain prompts", file=sys.stderr)
        args.plain = True
    return llm


def run_prompt(args) -> None:
    from ..evaluation.compare import PromptMaker, complete, first_paragraph, parse_config
    config = parse_config(args.config).replace(max_new_tokens=args.max_new_tokens)
    examples, pool = _data(args)
    if not 0 <= args.index < len(examples):
        raise ValueError(f"--index {args.index} is out of range: the {args.split} split has {len(examples)} examples")
    example = examples[args.index]
    llm = _load(args)
    maker = PromptMaker(llm, pool, args.task, args.select, _embed_fn(args), args.max_new_tokens, args.seed)
    text, messages = maker.build(example, args.shots)
    print(f"===== prompt ({args.shots}-shot, {args.select}, {'plain' if args.plain else 'chat template'}) =====")
    print(text if args.plain else llm.format_chat(messages))
    completion = complete(llm, [text if args.plain else messages], config, seed=args.seed, progress=False)[0]
    print(f"===== completion ({args.config}) =====")
    print(completion.strip())
    if first_paragraph(completion) != completion.strip():
        print(f"===== summary (first paragraph, as scored) =====\n{first_paragraph(completion)}")
    print(f"===== human reference ({example.id}) =====")
    print(example.summary)


def run_evaluate(args) -> None:
    from ..evaluation.compare import compare, make_variants, write_results
    from ..evaluation.report import scores_section
    specs = args.config or ["greedy"]
    make_variants(_shots(args.shots), specs)  # bad specs fail here, before the model loads
    examples, pool = _data(args)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        examples = examples[:args.limit]
    llm = _load(args)
    variants = make_variants(_shots(args.shots), specs, args.select, not args.plain, args.max_new_tokens)
    results = compare(llm, examples, variants, pool, args.task, embed_fn=_embed_fn(args),
                      batch_size=args.batch_size, seed=args.seed)
    paths = write_results(args.out, results, examples,
                          title=f"{args.model}: {args.task} on {len(examples)} {args.split} examples")
    section = scores_section(results)
    table = section.tables[0]
    print(" | ".join(table.header))
    for row in table.rows:
        print(" | ".join(row))
    print(section.text)
    print(f"wrote {paths['markdown']} and {paths['html']}")
