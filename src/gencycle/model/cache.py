"""Key/value cache for incremental decoding.

Keys and values of every layer live in two preallocated tensors, so a decoding step
writes in place instead of concatenating. Encoder-decoder models also keep each
layer's cross-attention keys/values, computed once from the encoder output.
"""

from __future__ import annotations

import torch


class KVCache:
    """keys / values: (layers, B, Hkv, max_length, D); `length` positions are filled."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 max_length: int, dtype: torch.dtype = torch.float32, device=None):
        shape = (num_layers, batch_size, num_kv_heads, max_length, head_dim)
        self._set(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.length = 0

    @classmethod
    def for_model(cls, model, batch_size: int, max_length: int) -> "KVCache":
        config, param = model.config, next(model.parameters())
        return cls(config.num_layers, batch_size, config.num_kv_heads, config.head_dim,
                   max_length, dtype=param.dtype if param.is_floating_point() else torch.float32,
                   device=param.device)

    def _set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values
        self._layers = [(keys[i], values[i]) for i in range(keys.shape[0])]  # per-layer views, made once

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, Hkv, T, D) after the filled part; return all (B, Hkv, S, D)."""
        start, T = self.length, k.shape[2]
        if start + T > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; this step needs {start + T}")
        keys, values = self._layers[layer]                      # (B, Hkv, max_length, D)
        keys.narrow(2, start, T).copy_(k)
        values.narrow(2, start, T).copy_(v)
        return keys.narrow(2, 0, start + T), values.narrow(2, 0, start + T)

    def advance(self, steps: int) -> None:
        """Called by the model once all layers have written a step."""
        self.length += steps

    def select(self, index: torch.Tensor) -> None:
        """Keep / reorder batch rows (beam search reordering, dropping finished rows)."""
        self._set(self.keys.index_select(1, index), self.values.index_select(1, index))
        self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                      for kv in self.cross]


class StaticKVCache(KVCache):
    """A KVCache whose one-token steps have fixed shapes, for a compiled decoding step.

    While `position` is None it fills like KVCache (the prompt's prefill, any length). Once
    `position` is a (1,) tensor, a step writes its keys/values at that slot and attention reads
    all `max_length` slots, the caller masking the ones not filled yet: no shape changes from one
    step to the next, so torch.compile builds one graph for every step (gencycle.generation.compiled).
    Rows are left-padded, so every row writes the same slot.
    """

    position: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position is None:
            return super().update(layer, k, v)
        keys, values = self._layers[layer]                      # (B, Hkv, max_length, D)
        keys.index_copy_(2, self.position, k)
        values.index_copy_(2, self.position, v)
        return keys, values
