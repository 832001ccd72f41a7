"""`gencycle prompt` and `gencycle evaluate`: in-context prompts and their comparison on a split.

    gencycle prompt --shots 3 --select similar --index 4         # the prompt it built, then the completion
    gencycle evaluate --shots 0,1,3 --config greedy --config "sample:temperature=0.7,top_p=0.9" \\
        --limit 20 --out runs/eval

Every option but MODEL is generated from `gencycle.workflows.PromptConfig` / `EvaluateConfig` (and
the configs they hold) by `cli.options`, so the commands and the Python API check the same values.
"""

from __future__ import annotations

import argparse

from ..assets import DEFAULT_MODEL
from .options import add_config_arguments, config_from_args

PROMPT = """\
Build the zero/one/few-shot prompt for example --index of --split (the shipped dialogue set, or
--data), print it, complete it with MODEL and print the completion and the human reference.
In-context examples come from --pool-split of the same folder (or from the file itself, never
the query).
"""
EVALUATE = """\
Score every (--shots x --config) variant on --split with ROUGE, BLEU and chrF, and write a
comparison report to --out: report.md, report.html, scores.json, scores.png, side_by_side.md.
A --config spec that sets max_new_tokens keeps its own; --max-new-tokens applies to the others.
"""


def _model(parser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model folder, .gguf file or packaged name (default: {DEFAULT_MODEL})")


def register(subparsers) -> None:
    from ..workflows import EvaluateConfig, PromptConfig
    prompt = subparsers.add_parser("prompt", help="build a zero/one/few-shot prompt for one example and complete it",
                                   description=PROMPT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model(prompt)
    add_config_arguments(prompt, PromptConfig())
    prompt.set_defaults(func=run_prompt)

    evaluate = subparsers.add_parser("evaluate", help="score (shots x generation config) variants on a split",
                                     description=EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model(evaluate)
    add_config_arguments(evaluate, EvaluateConfig())
    evaluate.set_defaults(func=run_evaluate)


def run_prompt(args) -> None:
    from ..workflows import PromptConfig, prompt
    config = config_from_args(PromptConfig(), args)
    result = prompt(args.model, config)
    p = config.prompting
    print(f"===== prompt ({config.shots}-shot, {p.select}, {'plain' if result.plain else 'chat template'}) =====")
    print(result.prompt)
    print(f"===== completion ({config.config}) =====")
    print(result.completion.strip())
    if result.summary != result.completion.strip():
        print(f"===== summary (first paragraph, as scored) =====\n{result.summary}")
    print(f"===== human reference ({result.example_id}) =====")
    print(result.reference)


def run_evaluate(args) -> None:
    from ..evaluation.report import scores_section
    from ..workflows import EvaluateConfig, evaluate
    result = evaluate(args.model, config_from_args(EvaluateConfig(), args))
    section = scores_section(result.results)
    table = section.tables[0]
    print(" | ".join(table.header))
    for row in table.rows:
        print(" | ".join(row))
    print(section.text)
    print(f"wrote {result.paths['markdown']} and {result.paths['html']}")
