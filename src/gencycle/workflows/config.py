"""What every workflow config shares: the options of a (nested) config dataclass, their help, overrides.

A workflow config is a dataclass whose fields are plain values or smaller config dataclasses
(`FinetuneConfig` holds a `TrainConfig`, a `LoraConfig`, ...). Each plain field is one *option*:
its name is unique in the whole tree (it is the CLI flag, `lora_rank` -> `--lora-rank`) and the
string literal under it is its help:

    @dataclass
    class LoraConfig:
        lora_rank: int = 8
        \"\"\"rank of each adapter's A (rank x in) and B (out x rank) matrices\"\"\"

`options(config)` walks the tree, `override(config, name=value)` replaces options by name, and
`gencycle.cli.options` turns the same walk into argparse flags, so the Python API and the CLI
cannot drift apart. A nesting field's metadata can name the fields the workflow sets itself
(they are not options) and say more about others in the workflow's words:

    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "set_by_workflow": ("out_dir",), "help": {"lr": "peak learning rate (default by --method: ...)"}})
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from gencycle.errors import OptionError, check_output


@dataclass(frozen=True)
class Option:
    """One plain field of a config tree."""
    path: tuple[str, ...]         # nesting fields above it: ("train",) for TrainConfig.lr in FinetuneConfig
    name: str
    hint: Any                     # the resolved type annotation
    default: Any                  # its value in the config walked (so a workflow's defaults show)
    help: str
    owner: type                   # the dataclass that declares it


Dtype = Literal["fp32", "bf16", "fp16"]


@dataclass
class RunConfig:
    """Where the run writes, and what it runs on."""

    out: str | Path | None = None
    """run folder: checkpoints, metrics, loss curve, report.json, the trained model or adapter"""
    resume: bool = False
    """continue from the newest checkpoint in --out (it says which, or that there is none)"""
    device: str | None = None
    """cpu, cuda, cuda:1, ... (default: this process's GPU when there is one, else cpu)"""
    dtype: Dtype | None = None
    """weights dtype when the model is loaded from a path (default: fp32)"""

    def __post_init__(self):
        from gencycle.checkpoints import resolve_dtype
        from gencycle.checkpoints.devices import resolve_device
        if self.device is not None:
            resolve_device(self.device)  # "cuda" on a CPU-only torch fails here, before any loading
        try:
            resolve_dtype(self.dtype)
        except ValueError:
            raise OptionError("dtype", f"must be one of {', '.join(typing.get_args(Dtype))}", self.dtype) from None
        if self.out is not None:
            check_output(self.out, "out")


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """{field: help} from the string literal written under each annotated field of `cls` and its bases."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):  # no source (a frozen app): the flags still work, without help
            continue
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                helps[node.target.id] = " ".join(after.value.value.split())
    return helps


def options(config, path: tuple[str, ...] = (), skip: tuple[str, ...] = (),
            helps: dict[str, str] | None = None) -> Iterator[Option]:
    """The options of the config instance `config`, depth first, in field order."""
    cls = type(config)
    hints, helps = typing.get_type_hints(cls), {**field_help(cls), **(helps or {})}
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from options(value, path + (f.name,), tuple(f.metadata.get("set_by_workflow", ())),
                               f.metadata.get("help"))
        elif f.name not in skip:
            yield Option(path, f.name, hints[f.name], value, helps.get(f.name, ""), cls)


def override(config, /, **values):
    """A copy of `config` with the options named in `values` replaced, wherever they are nested.

    override(FinetuneConfig(), method="lora", lora_rank=4, lr=1e-3) is
    FinetuneConfig(method="lora", lora=LoraConfig(lora_rank=4), train=TrainConfig(lr=1e-3)).
    """
    where = {}
    for option in options(config):
        if option.name in where:
            raise TypeError(f"option {option.name!r} is declared twice in {type(config).__name__}")
        where[option.name] = option.path
    unknown = sorted(set(values) - set(where))
    if unknown:
        raise TypeError(f"unknown option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} for "
                        f"{type(config).__name__}; options: {', '.join(where)}")
    by_path: dict[tuple[str, ...], dict] = {}
    for name, value in values.items():
        by_path.setdefault(where[name], {})[name] = value
    return _replace(config, (), by_path)


def _replace(config, path: tuple[str, ...], by_path: dict):
    changes = dict(by_path.get(path, {}))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and any(p[:len(path) + 1] == path + (f.name,) for p in by_path):
            changes[f.name] = _replace(value, path + (f.name,), by_path)
    return dataclasses.replace(config, **changes) if changes else config
