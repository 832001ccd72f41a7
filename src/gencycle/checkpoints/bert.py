"""BERT checkpoints: HF `BertModel` (no prefix) and `BertForMaskedLM` (`bert.` + `cls.`) layouts."""

from __future__ import annotations

from ..model.config import ModelConfig

MODEL_TYPES = ("bert",)

TABLE = [
    ("bert.embeddings.word_embeddings", "embed_tokens"),
    ("bert.embeddings.position_embeddings", "embed_positions"),
    ("bert.embeddings.token_type_embeddings", "embed_token_types"),
    ("bert.embeddings.LayerNorm", "embed_norm"),
    ("bert.encoder.layer.{i}.attention.self.query", "encoder.layers.{i}.self_attn.q_proj"),
    ("bert.encoder.layer.{i}.attention.self.key", "encoder.layers.{i}.self_attn.k_proj"),
    ("bert.encoder.layer.{i}.attention.self.value", "encoder.layers.{i}.self_attn.v_proj"),
    ("bert.encoder.layer.{i}.attention.output.dense", "encoder.layers.{i}.self_attn.o_proj"),
    ("bert.encoder.layer.{i}.attention.output.LayerNorm", "encoder.layers.{i}.attn_norm"),
    ("bert.encoder.layer.{i}.intermediate.dense", "encoder.layers.{i}.mlp.up_proj"),
    ("bert.encoder.layer.{i}.output.dense", "encoder.layers.{i}.mlp.down_proj"),
    ("bert.encoder.layer.{i}.output.LayerNorm", "encoder.layers.{i}.mlp_norm"),
    ("bert.pooler.dense", "pooler"),
    ("cls.predictions.transform.dense", "mlm_transform.0"),
    ("cls.predictions.transform.LayerNorm", "mlm_transform.2"),
    ("cls.predictions.decoder", "lm_head"),
]
IGNORED = ("position_ids", "cls.predictions.bias", "cls.seq_relationship")
FUSED, CONV1D = {}, ()
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}


def table(config: ModelConfig) -> list[tuple[str, str]]:
    return TABLE


def name_from_hf(name: str, config: ModelConfig) -> str:
    """A weight or module name of a file (or PEFT adapter) -> the table's: BertModel has no `bert.` prefix."""
    return name if name.startswith(("bert.", "cls.")) else "bert." + name


def name_to_hf(name: str, config: ModelConfig) -> str:
    """The table's name -> the file's: BertForMaskedLM keeps `bert.`, BertModel drops it."""
    return name if config.mlm_head else name.removeprefix("bert.")


def config_from_hf(hf: dict) -> ModelConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"BERT hidden_act {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    architectures = hf.get("architectures") or ["BertModel"]
    return ModelConfig(
        family="bert", architecture="encoder", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"], max_position_embeddings=hf.get("max_position_embeddings", 512),
        position="learned", type_vocab_size=hf.get("type_vocab_size", 2), norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12), pre_norm=False, embedding_norm=True,
        activation=ACTIVATIONS[act], qkv_bias=True, attn_out_bias=True, mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        mlm_head=any("MaskedLM" in a or "PreTraining" in a for a in architectures),
        pooler=not any("MaskedLM" in a for a in architectures), pad_token_id=hf.get("pad_token_id", 0),
    )


def config_to_hf(config: ModelConfig) -> dict:
    act = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[config.activation]
    return {
        "architectures": ["BertForMaskedLM" if config.mlm_head else "BertModel"], "model_type": "bert",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size, "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.norm_eps, "hidden_act": act,
        "tie_word_embeddings": config.tie_embeddings, "pad_token_id": config.pad_token_id,
    }


def weights_from_hf(state: dict, config: ModelConfig) -> dict:
    """Give BertModel files (no prefix) the `bert.` prefix of the table; the MLM head's bias is
    stored as `cls.predictions.bias` (its tied copy `decoder.bias` may be absent)."""
    state = {name_from_hf(k, config): v for k, v in state.items()}
    if "cls.predictions.bias" in state:
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    return state


def weights_to_hf(state: dict, config: ModelConfig) -> dict:
    """BertModel files carry no prefix; BertForMaskedLM keeps `bert.` and stores the head bias twice."""
    if config.mlm_head:
        out = {k: v for k, v in state.items() if not k.startswith("bert.pooler.")}
        out["cls.predictions.bias"] = out.pop("cls.predictions.decoder.bias")
        return out
    return {name_to_hf(k, config): v for k, v in state.items()}
