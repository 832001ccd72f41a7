"""`gencycle finetune MODEL --data PATH --method full|lora|prompt-tuning ...`

Every option but MODEL and --data is generated from `gencycle.workflows.FinetuneConfig` (and the
configs it holds) by `cli.options`, so the command and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse

from .options import add_config_arguments, config_from_args

DESCRIPTION = """\
Fine-tune MODEL on the instruction records of --data: every parameter (--method full), LoRA
adapters (lora) or a soft prompt (prompt-tuning). Records are instruction/input/output,
prompt/completion or dialogue/summary. From a folder of splits, the validation split gives the
eval loss and the test split the prompts for ROUGE before / after (--eval-data, --test-data
choose other files). The run folder (--out) gets checkpoints, metrics.jsonl, loss_curve.png,
report.json and the model (Hugging Face folder) or adapter (PEFT folder). Under torchrun it
trains data-parallel.
"""


def register(subparsers) -> None:
    from ..workflows import FinetuneConfig
    parser = subparsers.add_parser("finetune", help="instruction fine-tuning: full, LoRA or prompt tuning",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder, .gguf file or packaged model name")
    parser.add_argument("--data", required=True,
                        help="a .jsonl / .csv file, a folder of train/validation/test splits, or 'shipped'")
    add_config_arguments(parser, FinetuneConfig())
    parser.set_defaults(func=run)


def run(args) -> None:
    from ..workflows import FinetuneConfig, finetune
    result = finetune(args.model, args.data, config_from_args(FinetuneConfig(), args))
    print(result.summary())
    if result.out_dir is not None:
        print(f"wrote {result.out_dir}")
