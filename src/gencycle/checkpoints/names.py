"""Renaming weights between gencycle's module names and a checkpoint family's names.

A family gives a table of (hf, ours) module-path templates, where `{i}` is a layer
index. Only the module path is renamed; what follows (`.weight`, `.bias`,
`.lora_A.weight`) carries over, so adapters reuse the same table.
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + r"(?P<rest>\..*)?$")


def rename(name: str, table: list[tuple[str, str]], to_hf: bool) -> str | None:
    """Map one parameter or module name; None when no row of the table matches."""
    for hf, ours in table:
        source, target = (ours, hf) if to_hf else (hf, ours)
        match = _pattern(source).match(name)
        if match:
            groups = match.groupdict()
            return target.replace("{i}", groups.get("i") or "") + (groups["rest"] or "")
    return None
