"""Adapters in the PEFT file format: `adapter_config.json` + `adapter_model.safetensors`.

LoRA tensors are named as PEFT names them on the Hugging Face model:
    base_model.model.<HF module path>.lora_A.weight    (r, in)
    base_model.model.<HF module path>.lora_B.weight    (out, r)
e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (Llama),
`base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight` (T5). Module
paths go through the family module (`gencycle.checkpoints`): its name table, its prefix
quirks (`name_to_hf` / `name_from_hf`: BertModel has no `bert.`), and its FUSED modules
(GPT-2 keeps q, k and v in one `c_attn`: their adapters are written as one block-diagonal
LoRA, and read back split).

Soft prompts are PEFT's PROMPT_TUNING: one tensor `prompt_embeddings` (n, C).

Reading is tolerant like PEFT's own: unknown config keys are ignored; options that
would change the computation and that gencycle does not implement (DoRA, LoRA bias,
modules_to_save, ...) are refused by name.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints import family_module
from ..checkpoints.names import fused_parts, fused_whole, rename
from .lora import LoRALinear, add_lora, freeze_all_but, lora_layers
from .prompt_tuning import PromptTuningModel

CONFIG_FILE, WEIGHTS_FILE, BIN_FILE = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
PREFIX = "base_model.model."
TASK_TYPES = {"decoder": "CAUSAL_LM", "encoder-decoder": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}
# LoRA options that change what the adapter computes; value = the setting gencycle implements.
UNSUPPORTED = {"use_dora": False, "lora_bias": False, "bias": "none", "modules_to_save": None,
               "layer_replication": None, "trainable_token_indices": None, "target_parameters": None,
               "use_qalora": False, "alora_invocation_tokens": None, "megatron_config": None,
               "use_bdlora": None}


# ------------------------------------------------------------------ module names
def to_hf_module(model: nn.Module, name: str) -> str:
    """gencycle module path -> the module path in the family's HF model (what PEFT wraps)."""
    family, config = family_module(model.config), model.config
    hf = rename(name, family.table(config), to_hf=True)
    if hf is None:
        raise ValueError(f"module {name!r} has no name in the {config.family} Hugging Face layout")
    return family.name_to_hf(hf, config)


def _hf_or_none(model: nn.Module, name: str) -> str | None:
    try:
        return to_hf_module(model, name)
    except ValueError:
        return None


def from_hf_module(model: nn.Module, hf: str) -> str | None:
    family, config = family_module(model.config), model.config
    return rename(family.name_from_hf(hf, config), family.table(config), to_hf=False)


# ------------------------------------------------------------------ LoRA: save
def _fuse(entries: dict, fused: dict, scaling_of) -> dict:
    """Adapters of modules the HF model holds fused (GPT-2's q/k/v in one c_attn) -> one adapter
    of rank sum(r): A stacked, B block-diagonal. B is rescaled so that the file's scaling for
    rank R gives each block its own scaling."""
    groups: dict[str, dict] = {}
    out = {}
    for hf, entry in entries.items():
        whole = fused_whole(hf, fused)
        if whole:
            groups.setdefault(whole, {})[hf] = entry
        else:
            out[hf] = entry
    for whole, parts in groups.items():
        names = fused_parts(whole, fused)
        present = [p for p in names if p in parts]
        R = sum(parts[p]["rank"] for p in present)
        alpha = parts[present[0]]["alpha"]
        C = parts[present[0]]["B"].shape[0]
        A = torch.cat([parts[p]["A"].float() for p in present])                   # (R, C_in)
        B = torch.zeros(len(names) * C, R)                                         # (n*C, R)
        col = 0
        for p in present:
            e, row = parts[p], names.index(p) * C
            B[row:row + C, col:col + e["rank"]] = e["B"].float() * (e["scaling"] / scaling_of(alpha, R))
            col += e["rank"]
        dtype = parts[present[0]]["A"].dtype
        out[whole] = dict(A=A.to(dtype), B=B.to(dtype), rank=R, alpha=alpha)
    return out


def save_adapter(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA adapters or soft prompt in the PEFT format; returns the folder."""
    directory = Path(directory)
    if isinstance(model, PromptTuningModel):
        return _save_prompt(model, directory, base_model_name_or_path)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has neither LoRA adapters nor a soft prompt to save")
    first = next(iter(layers.values()))
    if any(l.dropout_p != first.dropout_p or l.use_rslora != first.use_rslora for l in layers.values()):
        raise ValueError("PEFT files hold one lora_dropout and one use_rslora; these adapters mix them")
    if any(l.merged for l in layers.values()):
        raise ValueError("the adapters are merged into the weights; unmerge_lora(model) before saving them")

    def scaling_of(alpha, rank):
        return alpha / math.sqrt(rank) if first.use_rslora else alpha / rank

    family = family_module(model.config)
    entries = _fuse({to_hf_module(model, name): dict(A=l.lora_A.weight.detach(), B=l.lora_B.weight.detach(),
                                                     rank=l.rank, alpha=l.alpha, scaling=l.scaling)
                     for name, l in layers.items()}, family.FUSED, scaling_of)

    r = Counter(e["rank"] for e in entries.values()).most_common(1)[0][0]
    alpha = Counter(e["alpha"] for e in entries.values()).most_common(1)[0][0]
    rank_pattern = {re.escape(hf): e["rank"] for hf, e in entries.items() if e["rank"] != r}
    alpha_pattern = {re.escape(hf): e["alpha"] for hf, e in entries.items() if e["alpha"] != alpha}

    # target_modules: the last names (PEFT's suffix rule) when they pick exactly these modules, else a regex
    all_linear = {fused_whole(hf, family.FUSED) or hf for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and (hf := _hf_or_none(model, n))}
    leaves = sorted({hf.rsplit(".", 1)[-1] for hf in entries})
    if {hf for hf in all_linear if hf.rsplit(".", 1)[-1] in leaves} == set(entries):
        target_modules: list[str] | str = leaves
    else:
        target_modules = "^(?:" + "|".join(re.escape(hf) for hf in sorted(entries)) + ")$"

    config = {
        "peft_type": "LORA", "task_type": TASK_TYPES[model.config.architecture],
        "base_model_name_or_path": base_model_name_or_path, "revision": None, "inference_mode": True,
        "r": r, "lora_alpha": alpha, "lora_dropout": first.dropout_p, "target_modules": target_modules,
        "bias": "none", "fan_in_fan_out": bool(family.CONV1D), "use_rslora": first.use_rslora,
        "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "layers_to_transform": None, "layers_pattern": None,
    }
    tensors = {}
    for hf, e in entries.items():
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = e["A"]
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = e["B"]
    return _write(directory, config, tensors)


def _write(directory: Path, config: dict, tensors: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(directory / WEIGHTS_FILE),
              metadata={"format": "pt"})
    return directory


def _save_prompt(model: PromptTuningModel, directory: Path, base_model_name_or_path) -> Path:
    config = model.model.config
    peft_config = {
        "peft_type": "PROMPT_TUNING", "task_type": TASK_TYPES[config.architecture],
        "base_model_name_or_path": base_model_name_or_path, "revision": None, "inference_mode": True,
        "num_virtual_tokens": model.num_virtual_tokens, "token_dim": config.hidden_size,
        "num_transformer_submodules": 1, "num_attention_heads": config.num_heads, "num_layers": config.num_layers,
        "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
    }
    return _write(directory, peft_config, {"prompt_embeddings": model.prompt_embeddings})


# ------------------------------------------------------------------ load
def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config dict and tensors of a PEFT adapter folder."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {str(directory)!r}: not a PEFT adapter folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from error
    if (directory / WEIGHTS_FILE).exists():
        try:
            tensors = load_file(str(directory / WEIGHTS_FILE))
        except Exception as error:  # safetensors raises several kinds for a damaged file
            raise ValueError(f"corrupt adapter weights {str(directory / WEIGHTS_FILE)!r}: {error}") from error
    elif (directory / BIN_FILE).exists():
        tensors = torch.load(directory / BIN_FILE, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no {WEIGHTS_FILE} (or {BIN_FILE}) in {str(directory)!r}")
    return config, tensors


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a PEFT LoRA or PROMPT_TUNING adapter onto `model`; returns the model to use
    (the same model with LoRA layers, or a PromptTuningModel wrapping it)."""
    config, tensors = read_adapter(directory)
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return _load_lora(model, config, tensors)
    if peft_type == "PROMPT_TUNING":
        return _load_prompt(model, config, tensors)
    raise ValueError(f"unsupported peft_type {peft_type!r} in {directory}; gencycle reads LORA and PROMPT_TUNING")


def _pattern_value(patterns: dict, hf: str, default):
    """PEFT's rank_pattern / alpha_pattern rule: the key matches the end of the module path."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?(?:{key})$", hf):
            return value
    return default


def _load_lora(model: nn.Module, config: dict, tensors: dict) -> nn.Module:
    for key, supported in UNSUPPORTED.items():
        value = config.get(key, supported)
        if value != supported and value not in (None, False, [], {}):
            raise ValueError(f"this LoRA adapter uses {key}={value!r}, which gencycle does not support")
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters; merge_lora(model, unload=True) them first")
    modules: dict[str, dict] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.[\w-]+)?\.weight", key)
        if match is None:
            raise ValueError(f"unexpected tensor {key!r} in the LoRA adapter (gencycle reads lora_A / lora_B "
                             "weights of Linear layers)")
        modules.setdefault(match.group(1), {})[match.group(2)] = tensor
    use_rslora = bool(config.get("use_rslora", False))
    fused = family_module(model.config).FUSED
    ranks, alphas, weights = {}, {}, {}
    for hf, pair in modules.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"adapter for {hf!r} lacks {'lora_B' if 'lora_A' in pair else 'lora_A'}")
        rank = pair["lora_A"].shape[0]
        alpha = _pattern_value(config.get("alpha_pattern"), hf, config.get("lora_alpha", 8))
        names = fused_parts(hf, fused)  # a fused module's B splits into equal row blocks; A is shared
        parts = list(zip(names, pair["lora_B"].chunk(len(names)))) if names else [(hf, pair["lora_B"])]
        for part, B in parts:
            name = from_hf_module(model, part)
            if not isinstance(_submodule(model, name), nn.Linear):
                raise ValueError(f"the adapter targets {hf!r}, which is not a Linear module of this "
                                 f"{model.config.family} model")
            ranks[name], alphas[name], weights[name] = rank, alpha, (pair["lora_A"], B)
    add_lora(model, weights, ranks, alphas, float(config.get("lora_dropout", 0.0)), use_rslora)
    for name, (A, B) in weights.items():
        layer: LoRALinear = model.get_submodule(name)
        for target, tensor in ((layer.lora_A.weight, A), (layer.lora_B.weight, B)):
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(f"adapter tensor for {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the model needs {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(tensor)
    freeze_all_but(model, lambda n: ".lora_A." in n or ".lora_B." in n)
    return model


def _submodule(model: nn.Module, name: str | None) -> nn.Module | None:
    try:
        return model.get_submodule(name) if name else None
    except AttributeError:
        return None


def _load_prompt(model: nn.Module, config: dict, tensors: dict) -> PromptTuningModel:
    if "prompt_embeddings" not in tensors:
        raise ValueError(f"PROMPT_TUNING adapter without a prompt_embeddings tensor (has {', '.join(tensors)})")
    prompt, n = tensors["prompt_embeddings"], int(config["num_virtual_tokens"])
    if prompt.shape[-1] != model.config.hidden_size:
        raise ValueError(f"soft prompt has width {prompt.shape[-1]}; the model's hidden_size is "
                         f"{model.config.hidden_size}")
    if prompt.shape[0] == 2 * n and model.config.architecture == "encoder-decoder":
        prompt = prompt[:n]  # PEFT's seq2seq layout [encoder; decoder]; at inference PEFT uses the encoder part
    for param in model.parameters():
        param.requires_grad_(False)
    return PromptTuningModel(model, n, prompt)
