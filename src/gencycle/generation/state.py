"""`DecodeState`: the model's side of a decoding loop (KV cache, attention mask, encoder output).

Its own module because every loop builds on it: greedy / sampling (decoding.py), beam search
(beam.py) and the compiled steps (compiled.py, a subclass); decoding.py imports the other two.
"""

from __future__ import annotations

import torch


class DecodeState:
    """The model's side of a decoding loop: KV cache, attention mask, encoder output.

    `state(ids)` feeds new tokens (N, t) and returns the next-token logits (N, V) in fp32;
    `state.select(index)` keeps / reorders / repeats rows (beam search, finished rows).
    `padding` (B,): left-padding length of each prompt row (None: no padding).
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int):
        self.model = model
        B, T = input_ids.shape
        self.encoder_decoder = model.config.architecture == "encoder-decoder"
        if self.encoder_decoder:  # the encoder runs once; the decoder starts from one token
            self.memory, _ = model.encode(input_ids, attention_mask)    # (B, Tenc, C)
            self.memory_mask, self.mask = attention_mask, None
            self.cache = self.new_cache(B, 1 + max_new_tokens)
            start = model.config.decoder_start_token_id
            start = start if start is not None else (model.config.pad_token_id or 0)
            self.start = torch.full((B, 1), start, dtype=torch.long, device=input_ids.device)
            self.padding = None
        else:  # no mask at all when nothing is padded: positions are then 0..S-1 anyway
            self.memory = self.memory_mask = None
            self.mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
            self.cache = self.new_cache(B, T + max_new_tokens)
            self.start = input_ids
            self.padding = None if self.mask is None else (self.mask != 0).int().argmax(dim=1)

    def new_cache(self, batch_size: int, length: int):
        return self.model.new_cache(batch_size, length)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.encoder_decoder:
            out = self.model(decoder_input_ids=ids, encoder_hidden_states=self.memory,
                             attention_mask=self.memory_mask, cache=self.cache, logits_to_keep=1)
        else:
            if self.mask is not None and self.cache.length > 0:  # (N, S): past + the new tokens
                self.mask = torch.cat([self.mask, self.mask.new_ones(ids.shape)], dim=1)
            out = self.model(ids, attention_mask=self.mask, cache=self.cache, logits_to_keep=1)
        return out.logits[:, -1].float()

    def select(self, index: torch.Tensor) -> None:
        self.cache.select(index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
        if self.memory is not None:
            self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
