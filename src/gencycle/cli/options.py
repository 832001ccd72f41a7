"""Command-line flags made from config dataclasses, and configs made back from the parsed flags.

    add_config_arguments(parser, FinetuneConfig())    --method, --lora-rank, --lr, ... with their help
    config = config_from_args(FinetuneConfig(), args)

Each option of the config tree (`gencycle.workflows.config.options`) becomes `--its-name`; its help
is the string under the field and its default the value in the instance given, so a workflow's
own defaults show. Types: bool -> --x / --no-x; Literal -> choices; int, float, str, Path;
tuple[float, float] -> two values; tuple[str, ...] / Sequence[str] -> one or more values,
unless the union holds Path (`str | Path | Sequence[str]`: one path on the command line, the
values themselves from Python); Optional[X] as X. Options of a nested config are grouped under
its class name and docstring.
"""

from __future__ import annotations

import argparse
import collections.abc
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


def argument(option: Option) -> dict:
    """argparse keyword arguments for one option."""
    kinds = _kinds(option.hint)
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
            kwargs.update(nargs=len(items) if fixed else "+", type=items[0])
        elif scalar is not None:
            kwargs["type"] = str if scalar is Path else scalar
        else:
            raise TypeError(f"{option.owner.__name__}.{option.name}: no command-line form for {option.hint}")
    kwargs["help"] = _help(option, kwargs.get("action") is not None)
    return kwargs


def _help(option: Option, boolean: bool) -> str:
    text, default = option.help, option.default
    if boolean:
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
    """`config` with every option replaced by its parsed flag (lists become tuples)."""
    values = {option.name: getattr(args, option.name) for option in options(config)}
    return override(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
