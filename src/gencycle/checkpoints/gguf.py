"""Read a GGUF file (llama.cpp's format) into the Hugging Face layout.

`read_gguf(path)` returns `(hf_config, state_dict)`: a transformers-style config dict and
fp32 tensors under the HF model's key names, so the HF converter can take it from there.
`load_gguf_cached(path)` does the same, converting once and keeping the result as
safetensors + config json in a cache folder.

This file knows the container: the header, ggml's `ne` shape order (fastest-varying
dimension first, the reverse of PyTorch's: `[576, 1536]` in the file is a `(1536, 576)`
weight) and dequantization. What the names and numbers mean belongs to the family
module (`llama.py`): its table's GGUF column, `config_from_gguf` for the metadata and
`weights_from_gguf` for llama.cpp's q/k row order. The config is checked by the family's
`config_from_hf`, as for an HF folder, before any tensor is dequantized.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .. import assets
from ..model.config import ModelConfig
from . import llama
from .names import GGUF, HF, translate

FAMILIES = {"llama": llama}  # general.architecture -> the family module with that GGUF column

# Tensor types that dequantize to fp32 here (names as gguf.GGMLQuantizationType spells them).
# K-quants are dequantized by the gguf package too (its numpy reference code).
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_PROGRESS_THRESHOLD = 50  # show a progress bar when dequantizing more tensors than this
_CACHE_FORMAT = 1  # bump when the conversion changes, so old cache entries are not reused
_REQUIRED = object()


# ----------------------------------------------------------------------------- reading

def _open(path: Path):
    """GGUFReader over `path`, with every way a bad file can fail turned into ValueError."""
    import gguf

    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {str(path)!r}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{str(path)!r} is not a GGUF file: it is empty")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, KeyError, IndexError, ... on bad bytes
        raise ValueError(f"{str(path)!r} is truncated or corrupt: the GGUF reader failed with "
                         f"{type(e).__name__}: {e}") from e
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise ValueError(f"{str(path)!r} is truncated or corrupt: tensor {t.name!r} needs bytes "
                             f"{t.data_offset}..{end} but the file has {size} bytes")
    return reader


def _field(reader, key: str, default=_REQUIRED):
    """One metadata value (a float32 as the shortest decimal that round-trips: 1e-05, not 9.99e-06);
    a missing key is an error unless a default is given."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"missing the GGUF metadata key {key}")
        return default
    value = field.contents()
    if [t.name for t in field.types] == ["FLOAT32"]:
        value = float(str(np.float32(value)))
    return value


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))  # ggml ne order -> PyTorch order


def _dequantize(tensor) -> np.ndarray:
    from gguf.quants import dequantize

    values = dequantize(tensor.data, tensor.tensor_type)
    # copy=True: F32 (and some F16 paths) come back as views of the file's memory map
    return np.array(values, dtype=np.float32, copy=True).reshape(_shape(tensor))


def _header(reader, path: Path):
    """(family module, hf_config, ModelConfig) from the metadata and tensor names alone."""
    arch = _field(reader, "general.architecture", None)
    family = FAMILIES.get(arch)
    if family is None:
        raise ValueError(f"{str(path)!r}: GGUF architecture {arch!r} is not supported; "
                         f"supported architectures: {', '.join(FAMILIES)}")
    try:
        shapes = {t.name: _shape(t) for t in reader.tensors}
        hf_config = family.config_from_gguf(arch, partial(_field, reader), shapes)
        return family, hf_config, family.config_from_hf(hf_config)  # refused as an HF folder would be
    except ValueError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


def read_gguf_config(path: str | os.PathLike) -> tuple[dict, ModelConfig]:
    """`(hf_config, ModelConfig)` of a GGUF file, from its header; no tensor is read."""
    path = Path(path).expanduser()
    _, hf_config, config = _header(_open(path), path)
    return hf_config, config


def _config_from_metadata(reader, path: Path) -> dict:
    """The old private name cli/estimate.py calls; `read_gguf_config` is the public one."""
    return _header(reader, path)[1]


def read_gguf(path: str | os.PathLike, progress: bool | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a GGUF file: `(hf_config, state_dict)` in the Hugging Face layout of its family.

    Everything that can be refused from the header is refused before a tensor is dequantized:
    the architecture, metadata the family does not support (RoPE scaling, ...), tensor names
    outside the family's table and tensor types outside SUPPORTED_TENSOR_TYPES. Tensors come
    back in fp32. `progress=None` shows a bar for files of more than 50 tensors. Bad files
    raise ValueError naming the file and the problem.
    """
    path = Path(path).expanduser()
    reader = _open(path)
    family, hf_config, config = _header(reader, path)
    table, wanted = family.table(config), []
    for t in reader.tensors:
        hf = translate(t.name, table, GGUF, HF)
        if hf is None:
            raise ValueError(f"{str(path)!r}: unexpected tensor {t.name!r} for a {config.family} GGUF "
                             f"(not a plain {config.family} model?)")
        if t.tensor_type.name not in SUPPORTED_TENSOR_TYPES:
            raise ValueError(f"{str(path)!r}: tensor {t.name!r} has type {t.tensor_type.name}, which gencycle does "
                             f"not dequantize; supported types: {', '.join(SUPPORTED_TENSOR_TYPES)}")
        wanted.append((t, hf))

    if progress is None:
        progress = len(wanted) > _PROGRESS_THRESHOLD
    if progress:
        from tqdm.auto import tqdm
        wanted = tqdm(wanted, desc=f"dequantizing {path.name}", unit="tensor")
    state_dict = {hf: torch.from_numpy(_dequantize(t)) for t, hf in wanted}
    del reader  # drop the memory map; every tensor above is a copy
    return hf_config, family.weights_from_gguf(state_dict, config)


# ----------------------------------------------------------------------------- caching

def default_cache_dir() -> Path:
    """`$GENCYCLE_CACHE/gguf`, or `~/.cache/gencycle/gguf`."""
    return assets.cache_dir("gguf")


def cache_entry(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder for `path`, keyed by its resolved path, size and modification time."""
    resolved = Path(path).expanduser().resolve()
    st = resolved.stat()
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{resolved}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{resolved.stem}-{key}"


def _load_entry(entry: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    from safetensors.torch import load_file

    config_file, weights_file = entry / "config.json", entry / "model.safetensors"
    if not (config_file.is_file() and weights_file.is_file()):
        return None
    try:
        config = json.loads(config_file.read_text())
        state_dict = load_file(str(weights_file))
    except Exception:  # unreadable entry (disk trouble, manual edits): convert again
        return None
    return config, state_dict


def load_gguf_cached(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                     progress: bool | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """`read_gguf(path)`, converted once and then loaded from a safetensors cache.

    The entry (a folder with `model.safetensors` and `config.json`) is written into a
    temporary folder and renamed into place, so an interrupted conversion never leaves
    a half-written entry behind. A changed file (size or mtime) gets a new entry.
    """
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {str(path)!r}")
    entry = cache_entry(path, cache_dir)
    cached = _load_entry(entry)
    if cached is not None:
        return cached

    config, state_dict = read_gguf(path, progress=progress)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        save_file(state_dict, str(tmp / "model.safetensors"), metadata={"source": str(path.resolve()), "format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if entry.exists():  # a broken entry (or another process won the race): replace it
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            if _load_entry(entry) is None:  # someone else wrote it meanwhile; if not, that's a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config, state_dict
