"""`gencycle dpo MODEL --data pairs.jsonl [--method lora|full] ...`

Every option but MODEL and --data is generated from `gencycle.workflows.dpo.DpoConfig` (and the
configs it holds) by `cli.options`, so the command and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse

from .options import add_config_arguments, config_from_args

DESCRIPTION = """\
Direct preference optimization of MODEL on the prompt/chosen/rejected rows of --data (a .jsonl /
.csv file, or a folder whose validation split gives the eval figures): LoRA adapters (--method
lora, the reference is the policy with its adapters off) or every weight (full, against a frozen
copy or precomputed reference log-probs). With --reward, --data holds prompts instead: each is
sampled --samples-per-prompt times by MODEL itself, the samples are scored (a reward model folder,
profanity, module:function or file.py:function) and the best and worst become a pair (written to
--out/pairs.jsonl). --out gets metrics.jsonl (loss, rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins per step), loss_curve.png, report.json, and the adapter (PEFT
folder) or the model (Hugging Face folder). The first step's loss is ln 2 = 0.6931.
"""


def register(subparsers) -> None:
    from ..workflows.dpo import DpoConfig
    parser = subparsers.add_parser("dpo", help="direct preference optimization (LoRA or full)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder, .gguf file or packaged model name")
    parser.add_argument("--data", required=True,
                        help="preference rows (.jsonl / .csv) or a folder of splits; prompts when --reward is given")
    add_config_arguments(parser, DpoConfig())
    parser.set_defaults(func=run)


def run(args) -> None:
    from ..workflows.dpo import DpoConfig, dpo
    result = dpo(args.model, args.data, config_from_args(DpoConfig(), args))
    print(result.summary())
    if result.out_dir is not None:
        print(f"wrote {result.out_dir}")
