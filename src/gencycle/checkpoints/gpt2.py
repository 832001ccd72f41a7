"""GPT-2 checkpoints: HF `GPT2LMHeadModel` layout (Conv1D weights stored transposed, fused qkv)."""

from __future__ import annotations

import torch

from ..model.config import ModelConfig
from .names import fused_parts, fused_whole

MODEL_TYPES = ("gpt2",)

TABLE = [
    ("transformer.wte", "embed_tokens"),
    ("transformer.wpe", "embed_positions"),
    ("transformer.h.{i}.ln_1", "decoder.layers.{i}.attn_norm"),
    ("transformer.h.{i}.attn.c_proj", "decoder.layers.{i}.self_attn.o_proj"),
    # c_attn is split into these three on load and fused again on save (FUSED)
    ("transformer.h.{i}.attn.q_proj", "decoder.layers.{i}.self_attn.q_proj"),
    ("transformer.h.{i}.attn.k_proj", "decoder.layers.{i}.self_attn.k_proj"),
    ("transformer.h.{i}.attn.v_proj", "decoder.layers.{i}.self_attn.v_proj"),
    ("transformer.h.{i}.ln_2", "decoder.layers.{i}.mlp_norm"),
    ("transformer.h.{i}.mlp.c_fc", "decoder.layers.{i}.mlp.up_proj"),
    ("transformer.h.{i}.mlp.c_proj", "decoder.layers.{i}.mlp.down_proj"),
    ("transformer.ln_f", "decoder.norm"),
    ("lm_head", "lm_head"),
]
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old files
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
FUSED = {"c_attn": ("q_proj", "k_proj", "v_proj")}  # one HF module holding three of ours (names.fused_parts)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def table(config: ModelConfig) -> list[tuple[str, str]]:
    return TABLE


def name_from_hf(name: str, config: ModelConfig) -> str:
    """A weight or module name of a file (or PEFT adapter) -> the table's: GPT2Model lacks `transformer.`."""
    return name if name.startswith(("transformer.", "lm_head")) else "transformer." + name


def name_to_hf(name: str, config: ModelConfig) -> str:
    return name  # written as GPT2LMHeadModel, whose names the table uses


def config_from_hf(hf: dict) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"GPT-2 activation_function {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ModelConfig(
        family="gpt2", architecture="decoder", vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"],
        num_layers=hf["n_layer"], num_heads=hf["n_head"], intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
        max_position_embeddings=hf.get("n_positions", 1024), position="learned", norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=ACTIVATIONS[act],
        qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"),
    )


def config_to_hf(config: ModelConfig) -> dict:
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}.get(config.activation)
    if act is None or config.position != "learned" or config.gated_mlp or config.num_kv_heads != config.num_heads:
        raise ValueError("this config cannot be written as GPT-2 (needs learned positions, a plain MLP "
                         "with gelu/relu, and no grouped-query attention)")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
        "n_embd": config.hidden_size, "n_layer": config.num_layers, "n_head": config.num_heads,
        "n_inner": config.intermediate_size, "n_positions": config.max_position_embeddings,
        "layer_norm_epsilon": config.norm_eps, "activation_function": act,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
    }


def weights_from_hf(state: dict, config: ModelConfig) -> dict:
    """HF names in, HF names out: add the `transformer.` prefix GPT2Model files lack,
    transpose Conv1D weights to Linear layout, split the fused c_attn into q/k/v."""
    out = {}
    for name, tensor in state.items():
        name = name_from_hf(name, config)
        if name.endswith(CONV1D):
            tensor = tensor.t()
        module, _, kind = name.rpartition(".")
        parts = fused_parts(module, FUSED)
        if not parts:
            out[name] = tensor
            continue
        for part, block in zip(parts, tensor.chunk(len(parts), dim=0)):
            out[f"{part}.{kind}"] = block.contiguous()
    return out


def weights_to_hf(state: dict, config: ModelConfig) -> dict:
    """The inverse: fuse q/k/v into c_attn and transpose back to Conv1D layout."""
    out, blocks = {}, {}
    for name, tensor in state.items():
        module, _, kind = name.rpartition(".")
        whole = fused_whole(module, FUSED)
        if whole:
            blocks.setdefault(f"{whole}.{kind}", {})[module] = tensor
        else:
            out[name] = tensor
    for name, parts in blocks.items():
        out[name] = torch.cat([parts[p] for p in fused_parts(name.rpartition(".")[0], FUSED)], dim=0)
    return {name_to_hf(k, config): (v.t().contiguous() if k.endswith(CONV1D) else v) for k, v in out.items()}
