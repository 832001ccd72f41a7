"""`gencycle` command line. Thin: every command is a call into the Python API.

Each area has a module with `register(subparsers)`; the commands it adds set
`func(args)` as their handler.

`main` is the one place where errors meet the user: bad input (a `gencycle.errors.UserError`,
any ValueError, a missing or unreadable file) prints `gencycle VERB: error: ...` on one line
and returns 2, as argparse does for a bad flag; an error about one option names its flag.
Warnings print as `gencycle VERB: warning: ...`. Anything else is a bug and keeps its
traceback; GENCYCLE_DEBUG=1 shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

# Each verb and the module that registers it: `gencycle VERB` imports that module only (a verb's
# module imports its stage: evaluation, serving, ... cost seconds that `generate` should not pay).
VERBS = {
    "agent": "gencycle.cli.agent", "attention": "gencycle.cli.inspect", "chat": "gencycle.cli.generate",
    "dpo": "gencycle.cli.dpo", "estimate": "gencycle.cli.estimate", "evaluate": "gencycle.cli.evaluate",
    "finetune": "gencycle.cli.finetune", "generate": "gencycle.cli.generate", "info": "gencycle.cli.inspect",
    "merge": "gencycle.cli.merge", "pretrain": "gencycle.cli.pretrain", "prompt": "gencycle.cli.evaluate",
    "rag": "gencycle.cli.rag", "reward": "gencycle.cli.reward", "rlhf": "gencycle.cli.rlhf",
    "serve": "gencycle.cli.serve", "tokenizer": "gencycle.cli.tokenizer",
}
COMMAND_MODULES = sorted(set(VERBS.values()))

# What a user's input causes (UserError is a ValueError; UnicodeDecodeError too). OSError covers
# missing, unreadable and unwritable files, which a command reports by name.
USER_ERRORS = (ValueError, OSError)
EPILOG = "Errors exit with status 2; GENCYCLE_DEBUG=1 shows their traceback."
FIELD_FIRST = re.compile(r"([a-z][a-z0-9]*(?:_[a-z0-9]+)*) (?=must |should |is |has )")  # "top_p must be ..."


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or (verb given and known) only the module that registers that verb."""
    parser = argparse.ArgumentParser(prog="gencycle", description="The generative-AI project lifecycle "
                                     "with transformer language models.", epilog=EPILOG)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in [VERBS[verb]] if verb in VERBS else COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that `args` ran: `gencycle tokenizer train` -> its `train` parser."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, sub.dest, None) not in sub.choices:
            return parser
        parser = sub.choices[getattr(args, sub.dest)]


def _flag(action: argparse.Action) -> str:
    """The long name of a flag: --lowercase of --lowercase / --no-lowercase."""
    names = [name for name in action.option_strings if not name.startswith("--no-")] or action.option_strings
    return max(names, key=len)


def describe(error: BaseException, parser: argparse.ArgumentParser | None = None) -> str:
    """One line for the user: the message, with the flag of the option it is about."""
    from ..errors import OptionError
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.strerror}: {str(error.filename)!r}"  # not "[Errno 2] No such file or directory: ..."
    else:
        message = str(error) or type(error).__name__
    if isinstance(error, UnicodeDecodeError):
        message = f"input is not UTF-8 text ({error.reason} at byte {error.start})"
    option = error.option if isinstance(error, OptionError) else None
    if option is None and isinstance(error, ValueError) and parser is not None:
        # a config's own check words it with the field name ("top_p must be ..."): name the flag instead
        field = FIELD_FIRST.match(message)
        if field and any(a.dest == field[1] and a.option_strings for a in parser._actions):
            option = field[1]
    if option is not None and parser is not None:
        flag = next((_flag(a) for a in parser._actions if a.dest == option and a.option_strings),
                    "--" + option.replace("_", "-"))
        positional = next((a for a in parser._actions if not a.option_strings and a.dest == option), None)
        if any(flag in action.option_strings for action in parser._actions):
            message = f"argument {flag}: {message.removeprefix(option + ' ')}"  # as argparse words it
        elif positional is not None:
            name = positional.metavar if isinstance(positional.metavar, str) else positional.dest
            message = f"argument {name}: {message.removeprefix(option + ' ')}"
    return message


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)  # `gencycle --help` or an unknown verb: every verb
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse: --help (0) or a bad flag (2, its message already printed)
        return exit.code if isinstance(exit.code, int) else 2
    verb = " ".join(filter(None, [args.command, getattr(args, f"{args.command}_command", None)]))
    here = command_parser(parser, args)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"gencycle {verb}: warning: {message}", file=sys.stderr)

    debug = os.environ.get("GENCYCLE_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return args.func(args) or 0
        except USER_ERRORS as error:
            if debug:
                raise
            print(f"gencycle {verb}: error: {describe(error, here)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\ngencycle {verb}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
