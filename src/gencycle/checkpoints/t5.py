"""T5 checkpoints (v1.0, v1.1, Flan-T5): HF `T5ForConditionalGeneration` layout."""

from __future__ import annotations

from ..model.config import ModelConfig

MODEL_TYPES = ("t5",)
IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")  # copies of `shared`
FUSED, CONV1D = {}, ()


def table(config: ModelConfig) -> list[tuple[str, str]]:
    mlp = ("wi_0", "wi_1") if config.gated_mlp else (None, "wi")
    rows = [("shared", "embed_tokens"), ("lm_head", "lm_head"),
            ("encoder.final_layer_norm", "encoder.norm"), ("decoder.final_layer_norm", "decoder.norm"),
            ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias", "encoder.relative_bias.embedding"),
            ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias", "decoder.relative_bias.embedding")]
    for stack, parts in (("encoder", [("0", "SelfAttention", "self_attn", "attn_norm")]),
                         ("decoder", [("0", "SelfAttention", "self_attn", "attn_norm"),
                                      ("1", "EncDecAttention", "cross_attn", "cross_norm")])):
        ff = str(len(parts))
        hf, ours = f"{stack}.block.{{i}}.layer.", f"{stack}.layers.{{i}}."
        for index, hf_attn, our_attn, our_norm in parts:
            rows += [(f"{hf}{index}.{hf_attn}.{p}", f"{ours}{our_attn}.{p}_proj") for p in "qkvo"]
            rows.append((f"{hf}{index}.layer_norm", f"{ours}{our_norm}"))
        if mlp[0]:
            rows.append((f"{hf}{ff}.DenseReluDense.{mlp[0]}", f"{ours}mlp.gate_proj"))
        rows += [(f"{hf}{ff}.DenseReluDense.{mlp[1]}", f"{ours}mlp.up_proj"),
                 (f"{hf}{ff}.DenseReluDense.wo", f"{ours}mlp.down_proj"),
                 (f"{hf}{ff}.layer_norm", f"{ours}mlp_norm")]
    return rows


def name_from_hf(name: str, config: ModelConfig) -> str:
    return name  # one layout: file, table and PEFT names agree


def name_to_hf(name: str, config: ModelConfig) -> str:
    return name


ACTIVATIONS = {"relu": "relu", "gelu_new": "gelu_tanh", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu"}


def config_from_hf(hf: dict) -> ModelConfig:
    projection = hf.get("feed_forward_proj", "relu")
    gated = projection.startswith("gated-")
    act = hf.get("dense_act_fn") or projection.removeprefix("gated-")
    if act == "gelu" and gated:
        act = "gelu_new"  # HF maps "gated-gelu" to gelu_new
    if act not in ACTIVATIONS:
        raise ValueError(f"T5 feed_forward_proj {projection!r} is not supported; supported: relu, gated-gelu")
    # T5 v1.0 ties lm_head to the embeddings and scales the decoder output by d_model**-0.5;
    # v1.1 / Flan-T5 do neither. transformers 5 writes this as `scale_decoder_outputs`
    # (and always `tie_word_embeddings: true`); older files say `tie_word_embeddings: false`.
    tied = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    return ModelConfig(
        family="t5", architecture="encoder-decoder", vocab_size=hf["vocab_size"], hidden_size=hf["d_model"],
        num_layers=hf.get("num_decoder_layers") or hf["num_layers"], num_encoder_layers=hf["num_layers"],
        num_heads=hf["num_heads"], head_dim=hf["d_kv"], intermediate_size=hf["d_ff"],
        max_position_embeddings=hf.get("n_positions", 512), position="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), norm_bias=False,
        activation=ACTIVATIONS[act], gated_mlp=gated, scale_attention=False,
        tie_embeddings=tied, scale_tied_logits=tied,
        pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id", 1),
        decoder_start_token_id=hf.get("decoder_start_token_id", 0),
    )


def config_to_hf(config: ModelConfig) -> dict:
    act = {"relu": "relu", "gelu_tanh": "gelu", "gelu": "gelu", "silu": "silu"}[config.activation]
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
        "vocab_size": config.vocab_size, "d_model": config.hidden_size, "d_kv": config.head_dim,
        "d_ff": config.intermediate_size, "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_layers, "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_buckets,
        "relative_attention_max_distance": config.relative_max_distance,
        "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": ("gated-" if config.gated_mlp else "") + act,
        "dense_act_fn": {"gelu_tanh": "gelu_new"}.get(config.activation, config.activation),
        "tie_word_embeddings": config.tie_embeddings, "scale_decoder_outputs": config.tie_embeddings,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id, "decoder_start_token_id": config.decoder_start_token_id,
    }


def weights_from_hf(state: dict, config: ModelConfig) -> dict:
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state = {**state, "shared.weight": state["encoder.embed_tokens.weight"]}
    if not config.tie_embeddings and "lm_head.weight" not in state and "shared.weight" in state:
        # transformers 5 stores an unscaled head that equals the embeddings only once
        state = {**state, "lm_head.weight": state["shared.weight"].clone()}
    return state


def weights_to_hf(state: dict, config: ModelConfig) -> dict:
    return state
