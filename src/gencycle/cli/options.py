"""Command-line flags made from config dataclasses, and configs made back from the parsed flags.

    add_config_arguments(parser, FinetuneConfig())    --method, --lora-rank, --lr, ... with their help
    config = config_from_args(FinetuneConfig(), args)

Each option of the config tree (`gencycle.workflows.config.options`) becomes `--its-name`; its help
is the string under the field and its default the value in the instance given, so a workflow's
own defaults show. Types: bool -> --x / --no-x; Literal -> choices; int, float, str, Path;
tuple[float, float] -> two values; tuple[str, ...] / Sequence[str] -> one or more values, and
the flag may be repeated (`--config a --config b`; numbers may also be written 0,1,3), unless the
union holds Path (`str | Path | Sequence[str]`: one path on the command line, the values
themselves from Python); Optional[X] as X, where a number also takes `none` (None: "off" or
"the default", as its help says). Numbers must be finite. Options of a nested config are grouped
under its class name and docstring. The values are checked by the config itself (its
__post_init__), so `config_from_args` raises the same OptionError the Python API does.
"""

from __future__ import annotations

import argparse
import collections.abc
import math
import types
import typing
from pathlib import Path

from ..workflows.config import Option, options, override

SCALARS = (str, int, float, Path)
SEQUENCES = (tuple, list, collections.abc.Sequence)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kinds(hint) -> list:
    """The members of a union other than None (the hint itself when it is not a union)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [k for k in typing.get_args(hint) if k is not type(None)]
    return [hint]


def number(kind: type, optional: bool = False, minimum: int | float | None = None):
    """An argparse type: a finite int / float (and `none` -> None when the option is optional), at
    least `minimum` when one is given (argparse then names the flag: "argument --x: must be ...")."""
    def parse(text: str):
        if optional and text.strip().lower() == "none":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}"
                                             + (" (or none)" if optional else "")) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {what} >= {minimum}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def number_list(kind: type):
    """An argparse type: one number or several separated by commas ("0,1,3") -> a list."""
    one = number(kind)

    def parse(text: str):
        try:
            return [one(part.strip()) for part in text.split(",")]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}s separated by commas or spaces, "
                                             f"e.g. {'0,1,3' if kind is int else '0.5,1.0'}; got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


class Extend(argparse.Action):
    """One or more values per use, the flag repeatable; the first use replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_lists", set())
        items = list(getattr(namespace, self.dest) or ()) if self.dest in given else []
        given.add(self.dest)
        for value in values:
            items.extend(value if isinstance(value, list) else [value])
        setattr(namespace, self.dest, items)


def argument(option: Option) -> dict:
    """argparse keyword arguments for one option."""
    kinds = _kinds(option.hint)
    optional = type(None) in typing.get_args(option.hint)
    kwargs: dict = {"dest": option.name, "default": option.default}
    if kinds == [bool]:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif len(kinds) == 1 and typing.get_origin(kinds[0]) is typing.Literal:
        kwargs["choices"] = typing.get_args(kinds[0])
        kwargs["type"] = type(kwargs["choices"][0])
    else:
        sequence = next((k for k in kinds if typing.get_origin(k) in SEQUENCES), None)
        items = typing.get_args(sequence) if sequence is not None else ()
        scalar = next((k for k in kinds if k in SCALARS), None)
        if items and items[0] in SCALARS and Path not in kinds:
            fixed = typing.get_origin(sequence) is tuple and Ellipsis not in items
            numeric = items[0] in (int, float)
            if fixed:
                kwargs.update(nargs=len(items), type=number(items[0]) if numeric else items[0])
            else:
                kwargs.update(nargs="+", action=Extend, type=number_list(items[0]) if numeric else items[0])
        elif scalar is not None:
            kwargs["type"] = number(scalar, optional) if scalar in (int, float) else str
        else:
            raise TypeError(f"{option.owner.__name__}.{option.name}: no command-line form for {option.hint}")
    kwargs["help"] = _help(option, kwargs.get("action") is argparse.BooleanOptionalAction)
    return kwargs


def _help(option: Option, boolean: bool) -> str:
    text, default = option.help, option.default
    if boolean and default is not None:  # None: the help says who chooses
        text += f" (default: {'on' if default else 'off'})"
    elif default is not None:
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        text += f" (default: {shown})"
    return text.strip().replace("%", "%%")  # argparse %-formats help


def add_config_arguments(parser: argparse.ArgumentParser, config) -> None:
    """One flag per option of the config instance `config`; a nested config's options in its own group."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    names: set[str] = set()
    for option in options(config):
        if option.name in names:
            raise TypeError(f"option {option.name!r} is declared twice in {type(config).__name__}")
        names.add(option.name)
        target = parser
        if option.path:
            top = option.path[0]
            if top not in groups:
                cls = type(getattr(config, top))
                groups[top] = parser.add_argument_group(cls.__name__, _first_line(cls.__doc__))
            target = groups[top]
        target.add_argument(flag(option.name), **argument(option))


def _first_line(doc: str | None) -> str | None:
    return doc.strip().split("\n\n")[0].replace("\n", " ") if doc else None


def config_from_args(config, args: argparse.Namespace):
    """`config` with every option replaced by its parsed flag (lists become tuples). Options of a
    method's own group (LoRA's, prompt tuning's) given with another --method warn that they are ignored."""
    values = {option.name: getattr(args, option.name, option.default) for option in options(config)}
    result = override(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    warn_ignored_by_method(config, result)
    return result


METHOD_GROUPS = {"lora": "lora", "prompt_tuning": "prompt-tuning"}  # nesting field -> the --method using it


def warn_ignored_by_method(base, config) -> None:
    """Warn for each option of a method's group that `config` changes from `base` while its method is
    another one (`finetune --method full --lora-rank 4` trains no adapter)."""
    import warnings
    method = getattr(config, "method", None)
    if not isinstance(method, str):
        return
    defaults = {option.name: option.default for option in options(base)}
    for option in options(config):
        owner = METHOD_GROUPS.get(option.path[0]) if option.path else None
        if owner is not None and owner != method and option.default != defaults[option.name]:
            warnings.warn(f"{flag(option.name)} is an option of --method {owner}: ignored with --method {method}")
