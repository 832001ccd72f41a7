"""Read a llama-architecture GGUF file (llama.cpp's format) into the Hugging Face layout.

`read_gguf(path)` returns `(hf_config, state_dict)`: a transformers-style LlamaConfig
dict and fp32 tensors under LlamaForCausalLM's key names, so the HF llama converter
can take it from there. `load_gguf_cached(path)` does the same, converting once and
keeping the result as safetensors + config json in a cache folder.

Two things GGUF does differently from HF, undone here:
- shapes are stored in ggml's `ne` order (fastest-varying dimension first), the
  reverse of PyTorch's; `[576, 1536]` in the file is a `(1536, 576)` weight.
- llama.cpp's converter permutes the rows of the q and k projections (q with
  n_head, k with n_head_kv) for its interleaved RoPE; `_unpermute_rope` inverts it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

SUPPORTED_ARCHITECTURES = ("llama",)

# Tensor types that dequantize to fp32 here (names as gguf.GGMLQuantizationType spells them).
# K-quants are dequantized by the gguf package too (its numpy reference code).
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# GGUF tensor name (inside blk.{i}) -> HF name (inside model.layers.{i}).
_LAYER_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PROGRESS_THRESHOLD = 50  # show a progress bar when dequantizing more tensors than this
_CACHE_FORMAT = 1  # bump when the conversion changes, so old cache entries are not reused


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


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _float(value) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))


def _config_from_metadata(reader, path: Path) -> dict:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{str(path)!r}: GGUF architecture {arch!r} is not supported; "
                         f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")

    def need(key: str):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ValueError(f"{str(path)!r} is missing the GGUF metadata key {arch}.{key!s}")
        return value

    if _field(reader, f"{arch}.expert_count", 0):
        raise ValueError(f"{str(path)!r}: mixture-of-experts llama GGUFs (expert_count > 0) are not supported")
    hidden = int(need("embedding_length"))
    n_head = int(need("attention.head_count"))
    n_kv = _field(reader, f"{arch}.attention.head_count_kv", n_head)
    if isinstance(n_kv, list):  # some files store one value per layer
        if len(set(n_kv)) != 1:
            raise ValueError(f"{str(path)!r}: per-layer key/value head counts {n_kv} are not supported")
        n_kv = n_kv[0]
    head_dim = int(_field(reader, f"{arch}.attention.key_length", 0) or hidden // n_head)
    rope_dim = _field(reader, f"{arch}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise ValueError(f"{str(path)!r}: RoPE on {rope_dim} of {head_dim} head dimensions "
                         f"(partial rotary) is not supported for llama")

    rope_scaling = None
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise ValueError(f"{str(path)!r}: RoPE scaling type {scaling_type!r} is not supported (only linear)")
        rope_scaling = {"rope_type": "linear", "factor": _float(need("rope.scaling.factor"))}

    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None:
        embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        vocab = int(embd.shape[1]) if embd is not None else None
    if vocab is None:
        raise ValueError(f"{str(path)!r}: cannot tell the vocabulary size (no {arch}.vocab_size, "
                         f"no tokenizer.ggml.tokens, no token_embd.weight)")

    def token_id(name: str):
        value = _field(reader, f"tokenizer.ggml.{name}_token_id")
        return None if value is None else int(value)

    names = {t.name for t in reader.tensors}
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(n_kv),
        "head_dim": head_dim,
        "max_position_embeddings": int(need("context_length")),
        "rms_norm_eps": _float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": token_id("bos"),
        "eos_token_id": token_id("eos"),
        "pad_token_id": token_id("padding"),
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_gate.bias" in names,
    }


def _hf_name(gguf_name: str, n_layers: int) -> str | None:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < n_layers:
        inner = _LAYER_TENSORS.get(parts[2])
        if inner is not None:
            return f"model.layers.{parts[1]}.{inner}"
    return None


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    h, hd, ff, v = config["hidden_size"], config["head_dim"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
        if config["attention_bias"]:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,), p + "self_attn.o_proj.bias": (h,)})
        if config["mlp_bias"]:
            shapes.update({p + "mlp.gate_proj.bias": (ff,), p + "mlp.up_proj.bias": (ff,),
                           p + "mlp.down_proj.bias": (h,)})
    return shapes


def _unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute(w, n_head, n_head_kv)` (convert_hf_to_gguf.py).

    llama.cpp: w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
    Here the caller passes n_head for q and n_head_kv for k; works for weights and biases.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(tensor, path: Path) -> np.ndarray:
    from gguf.quants import dequantize

    type_name = tensor.tensor_type.name
    if type_name not in SUPPORTED_TENSOR_TYPES:
        raise ValueError(f"{str(path)!r}: tensor {tensor.name!r} has type {type_name}, which gencycle does not "
                         f"dequantize; supported types: {', '.join(SUPPORTED_TENSOR_TYPES)}")
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # ggml ne order -> PyTorch order
    values = dequantize(tensor.data, tensor.tensor_type)
    # copy=True: F32 (and some F16 paths) come back as views of the file's memory map
    return np.array(values, dtype=np.float32, copy=True).reshape(shape)


def read_gguf(path: str | os.PathLike, progress: bool | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a llama GGUF file: `(hf_config, state_dict)` in the Hugging Face LlamaForCausalLM layout.

    Tensors come back dequantized to fp32 (types: F32, F16, Q8_0, Q4_0, Q4_1), with q/k
    un-permuted to HF's RoPE layout. `progress=None` shows a bar for files of more than
    50 tensors. Bad files raise ValueError naming the file and the problem.
    """
    path = Path(path).expanduser()
    reader = _open(path)
    config = _config_from_metadata(reader, path)
    n_layers = config["num_hidden_layers"]

    wanted = []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise ValueError(f"{str(path)!r}: tensor 'rope_freqs.weight' (llama-3 style RoPE frequency "
                             f"scaling) is not supported")
        hf = _hf_name(t.name, n_layers)
        if hf is None:
            raise ValueError(f"{str(path)!r}: unexpected tensor {t.name!r} for a llama GGUF with "
                             f"{n_layers} layers (not a plain llama model?)")
        wanted.append((t, hf))

    if progress is None:
        progress = len(wanted) > _PROGRESS_THRESHOLD
    if progress:
        from tqdm.auto import tqdm
        wanted = tqdm(wanted, desc=f"dequantizing {path.name}", unit="tensor")

    state_dict: dict[str, torch.Tensor] = {}
    for t, hf in wanted:
        w = _dequantize(t, path)
        if hf.endswith(("q_proj.weight", "q_proj.bias")):
            w = _unpermute_rope(w, config["num_attention_heads"])
        elif hf.endswith(("k_proj.weight", "k_proj.bias")):
            w = _unpermute_rope(w, config["num_key_value_heads"])
        state_dict[hf] = torch.from_numpy(np.ascontiguousarray(w))
    del reader  # drop the memory map; every tensor above is a copy

    expected = _expected_shapes(config)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ValueError(f"{str(path)!r} is incomplete: missing tensors {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    for k, shape in expected.items():
        if tuple(state_dict[k].shape) != shape:
            raise ValueError(f"{str(path)!r}: tensor {k} has shape {tuple(state_dict[k].shape)}, "
                             f"but the metadata implies {shape}")
    return config, state_dict


# ----------------------------------------------------------------------------- caching

def default_cache_dir() -> Path:
    """`$GENCYCLE_CACHE/gguf`, or `~/.cache/gencycle/gguf`."""
    root = os.environ.get("GENCYCLE_CACHE") or "~/.cache/gencycle"
    return Path(root).expanduser() / "gguf"


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
