"""`gencycle` command line. Thin: every command is a call into the Python API.

Each area has a module with `register(subparsers)`; the commands it adds set
`func(args)` as their handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "gencycle.cli.estimate",
    "gencycle.cli.evaluate",
    "gencycle.cli.finetune",
    "gencycle.cli.generate",
    "gencycle.cli.inspect",
    "gencycle.cli.merge",
    "gencycle.cli.tokenizer",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gencycle", description="The generative-AI project lifecycle "
                                     "with transformer language models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (FileNotFoundError, ValueError) as error:
        print(f"gencycle {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
