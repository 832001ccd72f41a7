"""Key/value cache for incremental decoding.

Keys and values of every layer live in two preallocated tensors, so a decoding step
writes in place instead of concatenating. Encoder-decoder models also keep each
layer's cross-attention keys/values, computed once from the encoder output.

Rows are right-aligned: every step writes the same slot of every row (slot `length`), and row
b's valid positions are the last `lengths[b]` filled slots, [starts[b], length). Left padding
and the slots before a row that joined a running batch later are invalid. Continuous batching
keeps a batch running while rows leave (`select`, then `compact`) and join (`insert`, `extend`)
at step boundaries; `attention_mask()` gives the matching (B, S) mask for the next forward.
"""

from __future__ import annotations

import torch


class KVCache:
    """keys / values: (layers, B, Hkv, max_length, D); `length` slots are filled.

    starts: (B,) long, the first valid slot of each row; `lengths` (B,) = length - starts.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 max_length: int, dtype: torch.dtype = torch.float32, device=None):
        shape = (num_layers, batch_size, num_kv_heads, max_length, head_dim)
        self._set(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.length = 0
        self.starts = torch.zeros(batch_size, dtype=torch.long, device=device)

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

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) long: how many valid positions each row holds."""
        return self.length - self.starts

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, Hkv, T, D) after the filled part; return all (B, Hkv, S, D)."""
        start, T = self.length, k.shape[2]
        if start + T > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; this step needs {start + T}")
        keys, values = self._layers[layer]                      # (B, Hkv, max_length, D)
        keys.narrow(2, start, T).copy_(k)
        values.narrow(2, start, T).copy_(v)
        return keys.narrow(2, 0, start + T), values.narrow(2, 0, start + T)

    def advance(self, steps: int, attention_mask: torch.Tensor | None = None) -> None:
        """Called by the model once all layers have written a step of `steps` positions.

        attention_mask: (B, S), 1 = token; when it covers every slot (S >= length + steps), each
        row's valid count is read from it (left padding in a prefill). Otherwise the new positions
        count as valid in every row.
        """
        self.length += steps
        if attention_mask is not None and attention_mask.shape[1] >= self.length:
            self.starts = self.length - attention_mask[:, :self.length].sum(dim=1).to(self.starts)

    def attention_mask(self, new_tokens: int = 0) -> torch.Tensor:
        """(B, length + new_tokens) long: 1 on each row's valid slots and on the `new_tokens` the
        next forward feeds, 0 before them: the mask to pass with that forward."""
        slots = torch.arange(self.length + new_tokens, device=self.starts.device)
        return (slots[None, :] >= self.starts[:, None]).long()

    def select(self, index: torch.Tensor) -> None:
        """Keep / reorder batch rows (beam search reordering, dropping finished rows)."""
        self._set(self.keys.index_select(1, index), self.values.index_select(1, index))
        self.starts = self.starts.index_select(0, index)
        self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                      for kv in self.cross]

    # ------------------------------------------------------------ continuous batching
    def insert(self, rows: torch.Tensor, other: "KVCache") -> None:
        """Put other's rows (its own prefill, B2 rows) into rows `rows` (B2,) of this running batch.

        They are right-aligned with the batch's filled slots, so the next step writes slot `length`
        for every row. If other holds more slots than this cache has filled, the batch's slots move
        right to make room (the new first slots are invalid for the rows already there).
        """
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.starts.device).reshape(-1)
        if rows.numel() != other.batch_size:
            raise ValueError(f"insert got {rows.numel()} row indices for a cache of {other.batch_size} rows")
        if any(kv is not None for kv in self.cross + other.cross):
            raise ValueError("rows can join the batch of a decoder-only cache only (no cross-attention)")
        mine, theirs = self.keys.shape, other.keys.shape
        if (mine[0], mine[2], mine[4]) != (theirs[0], theirs[2], theirs[4]):
            raise ValueError(f"cache of shape {tuple(theirs)} does not fit a cache of shape {tuple(mine)} "
                             "(layers, rows, kv heads, slots, head size)")
        n = other.length
        if n > self.length:
            self._shift(n - self.length)
        start = self.length - n
        self.keys[:, rows, :, :start] = 0
        self.values[:, rows, :, :start] = 0
        self.keys[:, rows, :, start:self.length] = other.keys[:, :, :, :n]      # (layers, B2, Hkv, n, D)
        self.values[:, rows, :, start:self.length] = other.values[:, :, :, :n]
        self.starts[rows] = start + other.starts.to(self.starts.device)

    def extend(self, other: "KVCache") -> None:
        """Append other's rows after this batch's rows (the batch grows by other.batch_size)."""
        B, extra = self.batch_size, other.batch_size
        shape = (self.keys.shape[0], extra, *self.keys.shape[2:])
        zeros = torch.zeros(shape, dtype=self.keys.dtype, device=self.keys.device)
        self._set(torch.cat([self.keys, zeros], dim=1), torch.cat([self.values, zeros], dim=1))
        self.starts = torch.cat([self.starts, self.starts.new_full((extra,), self.length)])
        self.insert(torch.arange(B, B + extra), other)

    def compact(self) -> None:
        """Drop the leading slots that no row uses (freed by rows that left), so a long-running batch
        does not run out of slots: every row's slots move left by min(starts). Positions are
        counted over the valid slots, so the next steps are unchanged."""
        steps = int(self.starts.min()) if self.batch_size else 0
        if steps == 0:
            return
        for tensor in (self.keys, self.values):
            tensor[..., :self.length - steps, :] = tensor[..., steps:self.length, :].clone()
        self.length -= steps
        self.starts = self.starts - steps

    def _shift(self, steps: int) -> None:
        """Move every row's filled slots `steps` slots right; the freed first slots are invalid."""
        if self.length + steps > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; the joining rows need "
                             f"{self.length + steps}")
        for tensor in (self.keys, self.values):
            tensor[..., steps:steps + self.length, :] = tensor[..., :self.length, :].clone()
            tensor[..., :steps, :] = 0
        self.length += steps
        self.starts = self.starts + steps


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
