"""Llama-family checkpoints (Llama, SmolLM2, Qwen2, Mistral-style): HF `LlamaForCausalLM` layout."""

from __future__ import annotations

from ..model.config import ModelConfig

MODEL_TYPES = ("llama", "qwen2", "mistral")

TABLE = [
    ("model.embed_tokens", "embed_tokens"),
    ("model.layers.{i}.self_attn", "decoder.layers.{i}.self_attn"),
    ("model.layers.{i}.mlp", "decoder.layers.{i}.mlp"),
    ("model.layers.{i}.input_layernorm", "decoder.layers.{i}.attn_norm"),
    ("model.layers.{i}.post_attention_layernorm", "decoder.layers.{i}.mlp_norm"),
    ("model.norm", "decoder.norm"),
    ("lm_head", "lm_head"),
]
IGNORED = ("rotary_emb.inv_freq",)


def table(config: ModelConfig) -> list[tuple[str, str]]:
    return TABLE


def rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"RoPE scaling {kind!r} is not supported yet (only the default RoPE)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict) -> ModelConfig:
    model_type = hf.get("model_type", "llama")
    qkv_bias = hf.get("attention_bias", model_type == "qwen2")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported for {model_type} (only silu)")
    return ModelConfig(
        family="qwen2" if model_type == "qwen2" else "llama",
        architecture="decoder",
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        position="rope", rope_theta=rope_theta(hf), norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation="silu", gated_mlp=True, qkv_bias=qkv_bias,
        attn_out_bias=hf.get("attention_bias", False) and model_type != "qwen2",
        mlp_bias=hf.get("mlp_bias", False), norm_bias=False,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
    )


def config_to_hf(config: ModelConfig) -> dict:
    qwen = config.family == "qwen2"
    hf = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "hidden_act": "silu", "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
    }
    if qwen:
        if config.attn_out_bias or config.mlp_bias or not config.qkv_bias:
            raise ValueError("Qwen2 checkpoints have bias on q/k/v only")
    else:
        if config.qkv_bias != config.attn_out_bias:
            raise ValueError("Llama checkpoints have one attention_bias for q/k/v/o; save as family 'qwen2' "
                             "for bias on q/k/v only")
        hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    return hf


def weights_from_hf(state: dict, config: ModelConfig) -> dict:
    return state


def weights_to_hf(state: dict, config: ModelConfig) -> dict:
    return state
