"""Renaming weights between gencycle's module names and a checkpoint family's names.

A family gives one table of module-path templates per row, `{i}` being a layer index:
    (Hugging Face name, gencycle name[, llama.cpp GGUF name])
Only the module path is renamed; what follows (`.weight`, `.bias`, `.lora_A.weight`)
carries over, so the same table serves HF files, GGUF files and PEFT adapters.
"""

from __future__ import annotations

import re
from functools import lru_cache

HF, OURS, GGUF = 0, 1, 2  # the columns of a family's table


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + r"(?P<rest>\..*)?$")


def translate(name: str, table: list[tuple[str, ...]], source: int, target: int) -> str | None:
    """Map one parameter or module name from column `source` to column `target`; None when no row matches."""
    for row in table:
        if len(row) <= max(source, target):
            continue
        match = _pattern(row[source]).match(name)
        if match:
            groups = match.groupdict()
            return row[target].replace("{i}", groups.get("i") or "") + (groups["rest"] or "")
    return None


def rename(name: str, table: list[tuple[str, ...]], to_hf: bool) -> str | None:
    """gencycle name -> HF name (`to_hf`), or the other way."""
    return translate(name, table, OURS, HF) if to_hf else translate(name, table, HF, OURS)


def fused_parts(module: str, fused: dict[str, tuple[str, ...]]) -> list[str]:
    """The modules one fused HF module holds, stacked on the output dimension in equal blocks
    (GPT-2's `h.0.attn.c_attn` -> `h.0.attn.q_proj`, `k_proj`, `v_proj`); [] when it is not fused.
    `fused` maps the fused module's last name to its parts' last names."""
    parent, _, leaf = module.rpartition(".")
    return [f"{parent}.{part}" if parent else part for part in fused.get(leaf, ())]


def fused_whole(module: str, fused: dict[str, tuple[str, ...]]) -> str | None:
    """The inverse of `fused_parts`: the fused HF module that holds `module`, or None."""
    parent, _, leaf = module.rpartition(".")
    for whole, parts in fused.items():
        if leaf in parts:
            return f"{parent}.{whole}" if parent else whole
    return None
