"""Llama-family checkpoints (Llama, SmolLM2, Qwen2, Mistral-style): HF `LlamaForCausalLM` layout,
and llama.cpp's GGUF names, metadata and q/k row order for the same weights."""

from __future__ import annotations

from ..model.config import ModelConfig

MODEL_TYPES = ("llama", "qwen2", "mistral")

TABLE = [  # (Hugging Face, gencycle, llama.cpp GGUF)
    ("model.embed_tokens", "embed_tokens", "token_embd"),
    ("model.layers.{i}.self_attn.q_proj", "decoder.layers.{i}.self_attn.q_proj", "blk.{i}.attn_q"),
    ("model.layers.{i}.self_attn.k_proj", "decoder.layers.{i}.self_attn.k_proj", "blk.{i}.attn_k"),
    ("model.layers.{i}.self_attn.v_proj", "decoder.layers.{i}.self_attn.v_proj", "blk.{i}.attn_v"),
    ("model.layers.{i}.self_attn.o_proj", "decoder.layers.{i}.self_attn.o_proj", "blk.{i}.attn_output"),
    ("model.layers.{i}.mlp.gate_proj", "decoder.layers.{i}.mlp.gate_proj", "blk.{i}.ffn_gate"),
    ("model.layers.{i}.mlp.up_proj", "decoder.layers.{i}.mlp.up_proj", "blk.{i}.ffn_up"),
    ("model.layers.{i}.mlp.down_proj", "decoder.layers.{i}.mlp.down_proj", "blk.{i}.ffn_down"),
    ("model.layers.{i}.input_layernorm", "decoder.layers.{i}.attn_norm", "blk.{i}.attn_norm"),
    ("model.layers.{i}.post_attention_layernorm", "decoder.layers.{i}.mlp_norm", "blk.{i}.ffn_norm"),
    ("model.norm", "decoder.norm", "output_norm"),
    ("lm_head", "lm_head", "output"),
]
IGNORED = ("rotary_emb.inv_freq",)
FUSED, CONV1D = {}, ()


def table(config: ModelConfig) -> list[tuple[str, str, str]]:
    return TABLE


def name_from_hf(name: str, config: ModelConfig) -> str:
    return name  # one layout: file, table and PEFT names agree


def name_to_hf(name: str, config: ModelConfig) -> str:
    return name


def rope_theta(hf: dict) -> float:
    """The RoPE base. Any RoPE scaling (transformers 4's `rope_scaling`, 5's `rope_parameters`) is refused."""
    for rope in (hf.get("rope_scaling") or {}, hf.get("rope_parameters") or {}):
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ValueError(f"RoPE scaling {kind!r} is not supported yet (only the default RoPE)")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"RoPE on part of each head (partial_rotary_factor={hf['partial_rotary_factor']}) "
                         f"is not supported for {hf.get('model_type', 'llama')}")
    return float((hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0)))


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


# ------------------------------------------------------------------ llama.cpp GGUF
def config_from_gguf(arch: str, field, shapes: dict[str, tuple[int, ...]]) -> dict:
    """A transformers LlamaConfig dict from a GGUF file's header, for `config_from_hf` to check.

    field(key[, default]) reads one metadata key (a missing key without a default is an error);
    shapes: GGUF tensor name -> shape. What has no LlamaConfig equivalent is refused here; RoPE
    scaling is translated, so that `rope_theta` refuses it as it does for HF files.
    """
    def get(key, *default):
        return field(f"{arch}.{key}", *default)

    if get("expert_count", 0):
        raise ValueError("mixture-of-experts llama GGUFs (expert_count > 0) are not supported")
    hidden, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    n_kv = get("attention.head_count_kv", n_head)
    if isinstance(n_kv, list):  # some files store one value per layer
        if len(set(n_kv)) != 1:
            raise ValueError(f"per-layer key/value head counts {n_kv} are not supported")
        n_kv = n_kv[0]
    head_dim = int(get("attention.key_length", 0) or hidden // n_head)
    rope_scaling = None
    if get("rope.scaling.type", None) not in (None, "none"):
        rope_scaling = {"rope_type": get("rope.scaling.type"), "factor": get("rope.scaling.factor", None)}
    if "rope_freqs.weight" in shapes:  # how llama.cpp stores llama-3 RoPE scaling
        rope_scaling = {"rope_type": "llama3"}

    vocab = int(get("vocab_size", 0) or shapes.get("token_embd.weight", (0,))[0])
    if not vocab:
        raise ValueError(f"cannot tell the vocabulary size (no {arch}.vocab_size, no token_embd.weight)")

    def token_id(name: str):
        value = field(f"tokenizer.ggml.{name}_token_id", None)
        return None if value is None else int(value)

    hf = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")), "num_attention_heads": n_head,
        "num_key_value_heads": int(n_kv), "head_dim": head_dim,
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": get("rope.freq_base", 10000.0), "rope_scaling": rope_scaling, "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in shapes,
        "bos_token_id": token_id("bos"), "eos_token_id": token_id("eos"), "pad_token_id": token_id("padding"),
        "attention_bias": "blk.0.attn_q.bias" in shapes, "mlp_bias": "blk.0.ffn_gate.bias" in shapes,
    }
    rope_dim = int(get("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        hf["partial_rotary_factor"] = rope_dim / head_dim
    return hf


def weights_from_gguf(state: dict, config: ModelConfig) -> dict:
    """HF names in and out: undo the row permutation llama.cpp's converter gives q (with n_head) and
    k (with n_head_kv) for its interleaved RoPE: each head's rows, (2, D/2) in HF, are (D/2, 2) there."""
    heads = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}
    out = {}
    for name, w in state.items():
        n = heads.get(name.split(".")[-2])
        if n is not None:  # weight (n*D, C) or bias (n*D,)
            w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
        out[name] = w.contiguous()
    return out
