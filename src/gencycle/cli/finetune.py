"""`gencycle finetune MODEL --data PATH --method full|lora|prompt-tuning ...`

The options are made from the signature of `gencycle.training.finetune.finetune`,
so the command and the Python function cannot drift apart.
"""

from __future__ import annotations

import argparse
import inspect
import typing
from pathlib import Path

HELP = {
    "data": "a .jsonl / .csv file, a folder of train/validation/test splits, or 'shipped'",
    "method": "what to train: every parameter, LoRA adapters, or a soft prompt",
    "out": "run folder: checkpoints, metrics, loss curve, report.json, the model or adapter",
    "template": "prompt template name (default: chosen by the records' fields)",
    "chat_template": "send each prompt as a user turn through the model's chat template (instruct models)",
    "target": "LoRA target modules: names (q_proj v_proj), groups (attention, mlp, all-linear)",
    "general_text": "text file (paragraphs split by blank lines) for the forgetting check: perplexity before/after",
    "resume": "continue from the newest checkpoint in --out",
    "precision": "auto: bf16 autocast on a GPU that supports it; fp32; bf16",
    "strategy": "auto: DDP under torchrun; fsdp shards a big model (full fine-tuning)",
    "max_steps": "optimizer steps (overrides --epochs)",
    "lr": "peak learning rate (default by method: full 5e-5, lora 2e-4, prompt-tuning 3e-2)",
}
SKIP = {"tokenizer", "model"}


def _option(parser: argparse.ArgumentParser, name: str, param: inspect.Parameter, hint) -> None:
    flag, default = "--" + name.replace("_", "-"), param.default
    kwargs = {"default": default, "help": HELP.get(name, "")}
    if name == "data":
        kwargs.update(required=True, default=None)
    args = [hint] if typing.get_origin(hint) is typing.Literal else \
        [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if typing.get_origin(base) is typing.Literal:
        kwargs["choices"] = typing.get_args(base)
    elif any(typing.get_origin(a) in (typing.Sequence, list, tuple) or a is typing.Sequence for a in args):
        kwargs["nargs"] = "+"
    elif base in (int, float):
        kwargs["type"] = base
    if kwargs["default"] is not None and kwargs["help"]:
        kwargs["help"] += f" (default: {default if not isinstance(default, tuple) else ' '.join(default)})"
    elif kwargs["default"] is not None:
        kwargs["help"] = f"default: {default if not isinstance(default, tuple) else ' '.join(default)}"
    parser.add_argument(flag, **kwargs)


def register(subparsers) -> None:
    from ..training.finetune import finetune
    parser = subparsers.add_parser("finetune", help="instruction fine-tuning: full, LoRA or prompt tuning",
                                   description=finetune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder, .gguf file or packaged model name")
    hints = typing.get_type_hints(finetune)
    for name, param in inspect.signature(finetune).parameters.items():
        if name not in SKIP:
            _option(parser, name, param, hints[name])
    parser.set_defaults(func=run)


def run(args) -> None:
    from ..training.finetune import finetune
    options = {k: v for k, v in vars(args).items() if k not in ("command", "func", "model")}
    if options.get("out") is not None:
        options["out"] = Path(options["out"])
    result = finetune(args.model, **options)
    print(result.summary())
    if result.out_dir is not None:
        print(f"wrote {result.out_dir}")
