"""One `ModelConfig` describes every architecture gencycle builds.

Families differ by fields, not by classes: GPT-2, Llama (SmolLM2, Qwen2), BERT and T5
are rows of settings for the same `Transformer`. `PRESETS` holds a few named rows
for models built from scratch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Architecture = Literal["decoder", "encoder", "encoder-decoder"]
FAMILIES = ("gpt2", "llama", "qwen2", "bert", "t5", "custom")
POSITIONS = ("learned", "sinusoidal", "rope", "relative")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


@dataclass
class ModelConfig:
    """Hyper-parameters of a transformer.

    `family` names the checkpoint family (it picks the Hugging Face converter);
    `architecture` says which stacks exist: an encoder, a decoder, or both.
    """

    family: str = "custom"
    architecture: Architecture = "decoder"
    vocab_size: int = 32000
    hidden_size: int = 768
    num_layers: int = 12                  # decoder layers (encoder layers for encoder-only)
    num_encoder_layers: int | None = None  # encoder-decoder only; defaults to num_layers
    num_heads: int = 12
    num_kv_heads: int | None = None       # grouped-query attention; None = num_heads
    head_dim: int | None = None           # None = hidden_size // num_heads
    intermediate_size: int = 3072
    max_position_embeddings: int = 2048   # the context window
    # positions
    position: str = "learned"             # learned | sinusoidal | rope | relative
    rope_theta: float = 10000.0
    relative_buckets: int = 32            # T5 relative attention bias
    relative_max_distance: int = 128
    type_vocab_size: int = 0              # BERT token-type embeddings (0 = none)
    # blocks
    norm: str = "layernorm"               # layernorm | rmsnorm
    norm_eps: float = 1e-5
    pre_norm: bool = True                 # False: BERT's post-norm residual blocks
    embedding_norm: bool = False          # BERT: LayerNorm right after the embeddings
    activation: str = "gelu"              # gelu | gelu_tanh | relu | silu
    gated_mlp: bool = False               # SwiGLU / gated-GELU: act(gate(x)) * up(x)
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = True                # LayerNorm has a bias (RMSNorm never does)
    scale_attention: bool = True          # False for T5: no 1/sqrt(head_dim)
    # heads
    tie_embeddings: bool = True
    lm_head_bias: bool = False
    scale_tied_logits: bool = False       # T5: hidden * d_model**-0.5 before a tied head
    mlm_head: bool = False                # BERT: transform + tied decoder over the vocabulary
    pooler: bool = False                  # BERT: tanh(dense(first token))
    # special tokens
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = None
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)  # unknown fields read from a file, kept for round trips

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; supported: {', '.join(FAMILIES)}")
        if self.architecture not in ("decoder", "encoder", "encoder-decoder"):
            raise ValueError(f"unknown architecture {self.architecture!r}; "
                             "supported: decoder, encoder, encoder-decoder")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; supported: {', '.join(POSITIONS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {self.norm!r}; supported: layernorm, rmsnorm")
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.architecture == "encoder-decoder" and self.num_encoder_layers is None:
            self.num_encoder_layers = self.num_layers

    @property
    def has_encoder(self) -> bool:
        return self.architecture in ("encoder", "encoder-decoder")

    @property
    def has_decoder(self) -> bool:
        return self.architecture in ("decoder", "encoder-decoder")

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Build from a dict; unknown keys go to `extra` (newer files still load)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        known.setdefault("extra", {}).update(extra)
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# Named configurations for models built from scratch (weights are random until trained).
PRESETS: dict[str, dict] = {
    # "Attention is all you need", base model (decoder-only half, sinusoidal positions)
    "vaswani-base-decoder": dict(family="custom", hidden_size=512, num_layers=6, num_heads=8,
                                 intermediate_size=2048, position="sinusoidal", activation="relu",
                                 qkv_bias=True, attn_out_bias=True, mlp_bias=True, vocab_size=32000),
    "gpt2-124m": dict(family="gpt2", vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                      intermediate_size=3072, max_position_embeddings=1024, activation="gelu_tanh",
                      qkv_bias=True, attn_out_bias=True, mlp_bias=True, lm_head_bias=False,
                      bos_token_id=50256, eos_token_id=50256),
    "smollm2-135m": dict(family="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                         num_kv_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                         position="rope", rope_theta=100000.0, norm="rmsnorm", norm_eps=1e-5,
                         activation="silu", gated_mlp=True, norm_bias=False, bos_token_id=1, eos_token_id=2),
    "tiny-llama": dict(family="llama", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, intermediate_size=128, max_position_embeddings=256,
                       position="rope", norm="rmsnorm", activation="silu", gated_mlp=True, norm_bias=False),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
