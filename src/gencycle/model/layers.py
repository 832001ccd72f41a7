"""The parts of a transformer block: norms, positions, attention, feed-forward.

Shapes use B = batch, T = query length, S = key length (past + T), H = query heads,
Hkv = key/value heads, D = head_dim, C = hidden_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .cache import KVCache
from .config import ModelConfig
from .fusion import FusedNames



# ---------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (Llama's RMSNorm, T5's LayerNorm)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp32 = x.dtype == torch.float32  # skip two no-op conversions (each an op call when decoding)
        h = x if fp32 else x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (h if fp32 else h.to(x.dtype))


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.hidden_size, config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


# ---------------------------------------------------------------- positions
def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The original paper's fixed encoding: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) in the half-split layout Hugging Face Llama uses."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, signed_sin each (B, 1, T, D).

        signed_sin is sin with its first half negated, which lets `apply_rotary` use a roll
        instead of slicing, negating and concatenating (fewer ops per layer when decoding).
        """
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, D/2)
        sin = freqs.sin()
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]          # (B, 1, T, D)
        signed_sin = torch.cat((-sin, sin), dim=-1)[:, None]
        return emb.cos().to(dtype), signed_sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) by the position's angle. x: (B, H, T, D).

    Hugging Face writes it x * cos + cat(-x2, x1) * sin; cat(-x2, x1) * sin = roll(x) * signed_sin.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


class RelativePositionBias(nn.Module):
    """T5's learned bias per (head, bucket of key - query distance), added to attention scores."""

    def __init__(self, config: ModelConfig, bidirectional: bool):
        super().__init__()
        self.embedding = nn.Embedding(config.relative_buckets, config.num_heads)
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_buckets
        self.max_distance = config.relative_max_distance

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        """Small distances get a bucket each; larger ones share log-spaced buckets."""
        num_buckets, bucket = self.num_buckets, torch.zeros_like(relative)
        if self.bidirectional:
            num_buckets //= 2
            bucket += (relative > 0).long() * num_buckets
            distance = relative.abs()
        else:
            distance = (-relative).clamp(min=0)
        exact = num_buckets // 2
        log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
        far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
        return bucket + torch.where(distance < exact, distance, far)

    def forward(self, query_length: int, key_length: int, offset: int, device) -> torch.Tensor:
        """Bias (1, H, T, S) for queries at positions offset..offset+T-1 over keys 0..S-1."""
        query = torch.arange(offset, offset + query_length, device=device)[:, None]
        key = torch.arange(key_length, device=device)[None, :]
        bias = self.embedding(self.bucket(key - query))  # (T, S, H)
        return bias.permute(2, 0, 1)[None]


# ---------------------------------------------------------------- attention
class Attention(FusedNames, nn.Module):
    """Multi-head (grouped-query) attention; self-attention or cross-attention.

    Runs through `F.scaled_dot_product_attention`, or computes the weights
    explicitly when the caller asks to see them.
    """

    def __init__(self, config: ModelConfig, layer_index: int, cross: bool = False):
        super().__init__()
        C, H, Hkv, D = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(C, H * D, bias=config.qkv_bias)
        self.k_proj = nn.Linear(C, Hkv * D, bias=config.qkv_bias)
        self.v_proj = nn.Linear(C, Hkv * D, bias=config.qkv_bias)
        self.o_proj = nn.Linear(H * D, C, bias=config.attn_out_bias)
        self.qkv_proj: nn.Module | None = None  # q|k|v as one layer, once fused (model/fusion.py)
        self.num_heads, self.num_kv_heads, self.head_dim = H, Hkv, D
        self.scale = D ** -0.5 if config.scale_attention else 1.0
        self.layer_index, self.cross = layer_index, cross
        self.dropout = config.dropout

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def _one_query_attention(self, q, k, v, mask):
        """Attention of one new token per row (decoding) as plain matmuls: for bf16 on CPU this is
        several times faster than SDPA's fused kernel, which is built for long queries; in a
        compiled graph also for fp32 (there SDPA copies each kv head for its query heads: SmolLM2's
        compiled int4 step, fp32 around the kernels, 8.04 ms with SDPA, 7.58 ms with this).
        q: (B, H, 1, D); k, v: (B, Hkv, S, D); mask: (B|1, H|1, 1, S) or None -> (B, H, 1, D)."""
        B, H, _, D = q.shape
        Hkv, S = k.shape[1], k.shape[2]
        if (q.dtype == torch.bfloat16 and q.device.type == "cpu" and D in (64, 128) and not q.requires_grad
                and k.stride(-1) == 1 and k.stride() == v.stride()
                and (mask is None or (mask.shape[1] == mask.shape[2] == 1 and mask.shape[3] == S))
                and cpu_kernels.attention_available()):
            bias = q.new_empty(0) if mask is None else mask         # gencycle's kernel (cpu_kernels.py)
            return torch.ops.gencycle.decode_attention(q.reshape(B, H, D), k, v, bias, self.scale).view(B, H, 1, D)
        q = q.reshape(B, Hkv, H // Hkv, D)                      # query heads grouped by kv head
        scores = (q @ k.transpose(-2, -1)) * self.scale          # (B, Hkv, H/Hkv, S)
        if mask is not None:
            scores = scores + (mask if mask.shape[1] == 1 else mask.reshape(mask.shape[0], Hkv, H // Hkv, S))
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return (weights @ v).reshape(B, H, 1, D)

    def fusable(self) -> dict[str, tuple[str, ...]]:
        return {} if self.cross else {"qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, T, C) -> q (B, T, H*D), k, v (B, T, Hkv*D): one matmul when fused."""
        if self.qkv_proj is not None:
            D = self.head_dim
            return self.qkv_proj(x).split([self.num_heads * D, self.num_kv_heads * D, self.num_kv_heads * D], -1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,                       # (B, T, C)
        mask: torch.Tensor | None,             # additive (B|1, H|1, T, S), or None
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        memory: torch.Tensor | None = None,    # cross-attention: encoder states (B, S, C)
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        if self.cross:
            q = self._heads(self.q_proj(x), self.num_heads)
            cached = cache.cross[self.layer_index] if cache is not None else None
            if cached is None:
                k = self._heads(self.k_proj(memory), self.num_kv_heads)
                v = self._heads(self.v_proj(memory), self.num_kv_heads)
                if cache is not None:
                    cache.cross[self.layer_index] = (k, v)
            else:
                k, v = cached
        else:
            q, k, v = self._qkv(x)
            q, k, v = self._heads(q, self.num_heads), self._heads(k, self.num_kv_heads), self._heads(v, self.num_kv_heads)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if cache is not None:
                k, v = cache.update(self.layer_index, k, v)  # (B, Hkv, S, D)

        weights = None
        if need_weights:
            if self.num_kv_heads != self.num_heads:
                repeat = self.num_heads // self.num_kv_heads
                k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1),
                                            torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = weights @ v
        elif T == 1 and not self.training and (q.dtype != torch.float32 or torch.compiler.is_compiling()):
            out = self._one_query_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal and mask is None, scale=self.scale,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.num_kv_heads != self.num_heads)
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(out), weights


# ---------------------------------------------------------------- feed-forward
ACT = {
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "relu": nn.ReLU(),
    "silu": nn.SiLU(),
}


def dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` when training; at inference, no call at all (saves a module call per use)."""
    return module(x) if module.training and module.p > 0 else x


class FeedForward(FusedNames, nn.Module):
    """Position-wise MLP: down(act(up(x))), or gated down(act(gate(x)) * up(x)) (SwiGLU, gated-GELU)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C, F_ = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=config.mlp_bias) if config.gated_mlp else None
        self.up_proj = nn.Linear(C, F_, bias=config.mlp_bias)
        self.down_proj = nn.Linear(F_, C, bias=config.mlp_bias)
        self.gate_up_proj: nn.Module | None = None  # gate|up as one layer, once fused (model/fusion.py)
        self.act = ACT[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def fusable(self) -> dict[str, tuple[str, ...]]:
        gated = self.gate_proj is not None or self.gate_up_proj is not None
        return {"gate_up_proj": ("gate_proj", "up_proj")} if gated else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act.forward  # the function itself: one module call less per layer
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            h = act(gate) * up
        elif self.gate_proj is not None:
            h = act(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = act(self.up_proj(x))
        return self.down_proj(dropout(self.dropout, h))


# ---------------------------------------------------------------- block
class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, feed-forward.

    Pre-norm (GPT-2, Llama, T5): x + f(norm(x)). Post-norm (BERT): norm(x + f(x)).
    """

    def __init__(self, config: ModelConfig, layer_index: int, cross: bool):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn_norm = make_norm(config)
        self.self_attn = Attention(config, layer_index)
        self.cross_norm = make_norm(config) if cross else None
        self.cross_attn = Attention(config, layer_index, cross=True) if cross else None
        self.mlp_norm = make_norm(config)
        self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x, norm, fn):
        if self.pre_norm:
            out, weights = fn(norm(x))
            return x + dropout(self.dropout, out), weights
        out, weights = fn(x)
        return norm(x + dropout(self.dropout, out)), weights

    def forward(self, x, mask, is_causal=False, rotary=None, cache=None,
                memory=None, memory_mask=None, need_weights=False):
        x, weights = self._residual(x, self.attn_norm, lambda h: self.self_attn(
            h, mask, is_causal, rotary, cache, need_weights=need_weights))
        cross_weights = None
        if self.cross_attn is not None:
            x, cross_weights = self._residual(x, self.cross_norm, lambda h: self.cross_attn(
                h, memory_mask, cache=cache, memory=memory, need_weights=need_weights))
        x, _ = self._residual(x, self.mlp_norm, lambda h: (self.mlp(h), None))
        return x, weights, cross_weights
