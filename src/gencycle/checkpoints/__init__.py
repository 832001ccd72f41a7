"""Load and save models in the layouts the ecosystem uses.

`load_model(path)` reads a Hugging Face model folder (config.json plus
model.safetensors, sharded safetensors with an index, or pytorch_model.bin), a
llama-architecture `.gguf` file, or a packaged model name. `save_pretrained` writes
the Hugging Face layout back.

Each family has one module that holds all it does differently, for HF files, GGUF files
and PEFT adapters alike (the generic code here, in gguf.py and in adapters/peft_format.py
asks it):
    MODEL_TYPES, table(config)        the HF model types it reads; its name table (names.py)
    config_from_hf / config_to_hf     HF config dict <-> ModelConfig; config_from_hf refuses
                                      what gencycle does not support, before weights are read
    weights_from_hf / weights_to_hf   per-family tensor changes (transposes, fused tensors)
    name_from_hf / name_to_hf         a file's prefix quirks, for weight and module names
    IGNORED, FUSED, CONV1D            tensors to skip; HF modules fused from several of ours;
                                      HF weights stored transposed (GPT-2's Conv1D)
and, for a family with a GGUF column (gguf.FAMILIES), config_from_gguf / weights_from_gguf.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import assets
from ..errors import UserError
from ..model.config import ModelConfig
from ..model.transformer import Transformer
from . import bert, gpt2, llama, t5
from .devices import resolve_device
from .names import rename

FAMILIES = {model_type: module for module in (gpt2, llama, bert, t5) for model_type in module.MODEL_TYPES}
FAMILY_MODULE = {"gpt2": gpt2, "llama": llama, "qwen2": llama, "bert": bert, "t5": t5}  # ModelConfig.family
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def family_of(hf_config: dict):
    model_type = hf_config.get("model_type")
    if model_type is None:
        raise ValueError(f"the model config has no \"model_type\" field; gencycle supports model_type "
                         f"{', '.join(sorted(FAMILIES))}")
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported architecture {model_type!r} (architectures: {hf_config.get('architectures')}); "
                         f"gencycle supports model_type {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def read_json(path: Path) -> dict:
    """A JSON object from a checkpoint file (config.json, an index); a malformed file, or one that
    holds no object, is a UserError naming it."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a JSON object ({{...}}), got a {type(values).__name__}")
    return values


def config_from_hf(hf_config: dict, source: str | Path = "config.json") -> ModelConfig:
    """The ModelConfig of a HF config dict (its family's converter), refusing what gencycle does not
    support; a config that lacks a field its family needs is a UserError naming `source` and the field."""
    family = family_of(hf_config)
    try:
        config = family.config_from_hf(hf_config)
    except KeyError as error:
        raise UserError(f"{source}: no {error.args[0]!r} field, which a {hf_config.get('model_type')!r} config "
                        "needs (is the file complete?)") from None
    except TypeError as error:
        raise UserError(f"{source}: a field has the wrong type ({error})") from None
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size"):  # a size no model can be built with (issue 12: it was a torch error)
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"{source}: the model's {name} must be a positive integer, got {value!r}")
    return config


def family_module(config: ModelConfig):
    """The family module of a ModelConfig, or a clear error for a family without a HF layout."""
    if config.family not in FAMILY_MODULE:
        raise ValueError(f"family {config.family!r} has no Hugging Face layout; "
                         f"supported: {', '.join(FAMILY_MODULE)}")
    return FAMILY_MODULE[config.family]


# ------------------------------------------------------------------ reading files
def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"corrupt or truncated safetensors file {str(path)!r}: {error}") from error


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a damaged zip / pickle
        raise ValueError(f"corrupt or unreadable weights file {str(path)!r}: {error}") from error


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder, whichever of the usual files holds them."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            weight_map = read_json(path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{path}: no \"weight_map\" object (which shard holds which tensor)")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise FileNotFoundError(f"{path} lists shard files that are missing: {', '.join(missing)}")
            load = _load_safetensors if name.startswith("model.safetensors") else _load_bin
            state = {}
            for shard in shards:
                state.update(load(folder / shard))
            return state
        return _load_safetensors(path) if name.endswith(".safetensors") else _load_bin(path)
    raise FileNotFoundError(f"no weights file in {str(folder)!r}: looked for {', '.join(WEIGHT_FILES)}")


# ------------------------------------------------------------------ HF state dict <-> model
def model_from_hf(hf_config: dict, hf_state: dict[str, torch.Tensor], dtype=None, device=None) -> Transformer:
    """Build a Transformer from a HF config dict and HF-named tensors."""
    family = family_of(hf_config)
    config = config_from_hf(hf_config)
    model = Transformer.for_loading(config)  # no random initialisation: every weight is loaded next
    load_hf_state(model, family, hf_state)
    return model.to(device=device or default_device(), dtype=resolve_dtype(dtype)).eval()


def load_hf_state(model: Transformer, family, hf_state: dict[str, torch.Tensor]) -> None:
    config, table = model.config, family.table(model.config)
    expected = model.state_dict()
    state, unexpected = {}, []
    for hf_name, tensor in family.weights_from_hf(hf_state, config).items():
        name = rename(hf_name, table, to_hf=False)
        if name is None or name not in expected:
            if not any(s in hf_name for s in family.IGNORED):
                unexpected.append(hf_name)
            continue
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"tensor {hf_name!r} has shape {tuple(tensor.shape)} in the checkpoint, "
                             f"but the model expects {tuple(expected[name].shape)}")
        state[name] = tensor
    tied = {"lm_head.weight"} if config.tie_embeddings else set()
    missing = [n for n in expected if n not in state and n not in tied]
    if missing:
        hf_names = [rename(n, table, to_hf=True) or n for n in missing]
        raise ValueError(f"checkpoint is missing {len(missing)} weight(s): {', '.join(hf_names[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        warnings.warn(f"ignored {len(unexpected)} unknown tensor(s) in the checkpoint: {', '.join(unexpected[:5])}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under the HF names of its family (tied matrices stored once)."""
    config = model.config
    family = family_module(config)
    table = family.table(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        hf_name = rename(name, table, to_hf=True)
        if hf_name is None:
            raise ValueError(f"weight {name!r} has no name in the {config.family} layout")
        state[hf_name] = tensor
    return family.weights_to_hf(state, config)


# ------------------------------------------------------------------ public API
def load_model(path: str | Path, dtype=None, device=None, quantize: str | None = None) -> Transformer:
    """Load a model folder, a `.gguf` file, or a packaged model name; returns it in eval mode.

    quantize: None, "int8" or "int4" ("int4-g32" picks the group size): weight-only quantization
    for inference (see `gencycle.model.quantize`); the rest of the model keeps `dtype` (fp32 by
    default: eager CPU decoding is faster with fp32 around the int8 / int4 kernels; compiled steps are
    as fast with bf16, which then runs the prompt faster, generation/defaults.py). q|k|v and gate|up stay separate
    layers (LoRA targets them); quantize, compile_decoding and `Transformer.fuse_projections` fuse them.
    """
    if quantize is not None:
        from ..model.quantize import parse_mode
        parse_mode(quantize)  # a bad name fails before the weights are read
    if device is not None:
        resolve_device(device)  # so does a device this machine lacks
    resolve_dtype(dtype)
    model = _load(path, dtype, device)
    if quantize is not None:
        from ..model.quantize import quantize_model
        quantize_model(model, quantize)
    return model


def _load(path: str | Path, dtype=None, device=None) -> Transformer:
    path = assets.resolve(path)
    if path.is_file() and path.suffix == ".gguf":
        from .gguf import load_gguf_cached
        hf_config, hf_state = load_gguf_cached(path)
        return model_from_hf(hf_config, hf_state, dtype, device)
    if path.is_file():
        raise ValueError(f"{str(path)!r} is a file; give a model folder (with config.json) or a .gguf file")
    config_path = path / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"no config.json in {str(path)!r}")
    hf_config = read_json(config_path)
    config_from_hf(hf_config, config_path)  # refuse what is not supported before reading gigabytes
    return model_from_hf(hf_config, read_weights(path), dtype, device)


def save_pretrained(model: Transformer, directory: str | Path, safe_serialization: bool = True) -> Path:
    """Write config.json and model.safetensors (or pytorch_model.bin) in the HF layout."""
    if getattr(model, "quantization", None):
        raise ValueError(f"this model holds {model.quantization} weights for inference; the Hugging Face layout "
                         "needs the original ones: save the model before quantizing it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = family_module(model.config).config_to_hf(model.config)
    hf_config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    state = {k: v.detach().contiguous().cpu() for k, v in hf_state_dict(model).items()}
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if safe_serialization:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def load_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a model folder, without reading its weights."""
    folder = assets.resolve(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {str(folder)!r}")
    return config_from_hf(read_json(folder / "config.json"), folder / "config.json")
