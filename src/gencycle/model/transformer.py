"""The one `Transformer`: encoder-only, decoder-only or encoder-decoder, by config.

    token ids -> embeddings (+ positions) -> N x Block -> final norm -> head -> logits

Encoder-only (BERT) runs the encoder stack; decoder-only (GPT-2, Llama) runs the
decoder stack with a causal mask; encoder-decoder (T5) runs the encoder once and
the decoder with cross-attention over the encoder's output.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from torch import nn

from .cache import KVCache
from .config import ModelConfig
from .layers import ACT, Block, RelativePositionBias, Rotary, make_norm, sinusoidal_table


@dataclass
class ModelOutput:
    logits: torch.Tensor | None                   # (B, T, V), None for a headless encoder
    hidden_states: torch.Tensor                   # (B, T, C) after the final norm
    attentions: tuple | None = None               # per layer (B, H, T, S): the model's main stack
    encoder_attentions: tuple | None = None       # encoder-decoder: the encoder's
    cross_attentions: tuple | None = None         # encoder-decoder: decoder over encoder
    encoder_hidden_states: torch.Tensor | None = None
    pooled_output: torch.Tensor | None = None     # BERT pooler: (B, C)
    cache: KVCache | None = None


def _last(hidden: torch.Tensor, n: int) -> torch.Tensor:
    """The last n positions of (B, T, C), contiguous so the head runs one plain matmul (0 = all)."""
    return hidden[:, -n:].contiguous() if n else hidden


class Stack(nn.Module):
    """A tower of blocks with its final norm (and T5's relative position bias)."""

    def __init__(self, config: ModelConfig, num_layers: int, causal: bool, cross: bool):
        super().__init__()
        self.causal = causal
        self.layers = nn.ModuleList(Block(config, i, cross) for i in range(num_layers))
        self.norm = make_norm(config) if config.pre_norm else None
        self.relative_bias = (RelativePositionBias(config, bidirectional=not causal)
                              if config.position == "relative" else None)


_INIT_LOCK = threading.Lock()
_INITS = ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_", "zeros_", "ones_")
_SKIPPING = threading.local()


@contextlib.contextmanager
def _uninitialised():
    """torch.nn.init's functions do nothing in this thread while it builds a model whose weights are
    loaded next; other threads initialise as usual (the swap of nn.init's functions is locked)."""
    def skipping(function):
        return lambda tensor, *args, **kwargs: (tensor if getattr(_SKIPPING, "on", False)
                                                else function(tensor, *args, **kwargs))
    with _INIT_LOCK:
        originals = {name: getattr(nn.init, name) for name in _INITS}
        for name, function in originals.items():
            setattr(nn.init, name, skipping(function))
        _SKIPPING.on = True
        try:
            yield
        finally:
            _SKIPPING.on = False
            for name, function in originals.items():
                setattr(nn.init, name, function)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        C, V = config.hidden_size, config.vocab_size
        self.embed_tokens = nn.Embedding(V, C)
        self.embed_positions = None
        if config.position == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, C)
        elif config.position == "sinusoidal":
            self.register_buffer("sinusoidal", sinusoidal_table(config.max_position_embeddings, C), persistent=False)
        self.rotary = Rotary(config.head_dim, config.rope_theta) if config.position == "rope" else None
        self.embed_token_types = nn.Embedding(config.type_vocab_size, C) if config.type_vocab_size else None
        self.embed_norm = make_norm(config) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.dropout)

        if config.architecture == "encoder":
            self.encoder, self.decoder = Stack(config, config.num_layers, causal=False, cross=False), None
        elif config.architecture == "decoder":
            self.encoder, self.decoder = None, Stack(config, config.num_layers, causal=True, cross=False)
        else:
            self.encoder = Stack(config, config.num_encoder_layers, causal=False, cross=False)
            self.decoder = Stack(config, config.num_layers, causal=True, cross=True)

        # heads
        self.mlm_transform = None
        if config.mlm_head:  # BERT: dense -> act -> LayerNorm, then the (tied) vocabulary projection
            self.mlm_transform = nn.Sequential(nn.Linear(C, C), ACT[config.activation], make_norm(config))
        self.lm_head = None
        if config.has_decoder or config.mlm_head:
            self.lm_head = nn.Linear(C, V, bias=config.lm_head_bias or config.mlm_head)
        self.pooler = nn.Linear(C, C) if config.pooler else None

        self.apply(self._init_weights)
        self.tie_weights()

    # ------------------------------------------------------------ set-up
    @classmethod
    def for_loading(cls, config: ModelConfig) -> "Transformer":
        """A Transformer whose weights are uninitialised memory, to load a checkpoint into (every
        parameter must then be loaded: `load_model` checks that none is missing). It skips the random
        initialisation that loading overwrites (SmolLM2-135M: 1.3 s of a 1.5 s load); the buffers
        computed from the config (rotary frequencies, the sinusoidal table) are made as usual."""
        with _uninitialised():
            return cls(config)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        if self.lm_head is not None and self.config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def fuse_projections(self) -> "Transformer":
        """Fuse q|k|v and gate|up into one Linear layer each, so inference runs one matmul per group
        instead of three or two (`fusion.fuse_for_inference`; compile_decoding and quantize_model
        do it themselves). state_dict names stay the separate layers'. Returns the model."""
        from .fusion import fuse_for_inference
        return fuse_for_inference(self)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once each (a tied matrix is one parameter)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache.for_model(self, batch_size, max_length)

    # ------------------------------------------------------------ pieces of the forward pass
    def embed(self, input_ids=None, positions=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions)
        elif self.config.position == "sinusoidal":
            x = x + self.sinusoidal[positions].to(x.dtype)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
            x = x + self.embed_token_types(token_type_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.dropout(x)

    def _positions(self, attention_mask, length: int, past: int, device) -> torch.Tensor:
        """Position of each new token: counted over the non-padding tokens when a mask is given."""
        if self.config.position in ("learned", "sinusoidal", "rope") and past + length > self.config.max_position_embeddings:
            raise ValueError(f"input of {past + length} tokens is longer than the model's context window "
                             f"of {self.config.max_position_embeddings} tokens")
        if attention_mask is None:
            return torch.arange(past, past + length, device=device)[None]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, past:past + length]

    def _mask(self, stack: Stack, attention_mask, length: int, past: int, dtype, device):
        """Additive attention mask (B|1, H|1, T, S) with padding, causality and T5's bias; or None."""
        S = past + length
        bias = stack.relative_bias(length, S, past, device) if stack.relative_bias is not None else None
        if attention_mask is None and bias is None:
            if not stack.causal or length == 1:
                return None, False
            if past == 0:
                return None, True  # let SDPA apply its own causal mask
        if bias is None and length == 1:  # one new token sees every past one: padding is all there is to mask
            padding = attention_mask[:, None, None, :S] == 0                          # (B, 1, 1, S)
            return torch.zeros(padding.shape, dtype=dtype, device=device).masked_fill(padding, torch.finfo(dtype).min), False
        allowed = torch.ones(1, 1, length, S, dtype=torch.bool, device=device)
        if stack.causal:
            query = torch.arange(past, S, device=device)[:, None]
            allowed = allowed & (torch.arange(S, device=device)[None, :] <= query)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :S].bool()
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        return (mask if bias is None else mask + bias.to(dtype)), False

    def _run(self, stack: Stack, x, attention_mask, past, cache=None, rotary=None,
             memory=None, memory_mask=None, need_weights=False):
        mask, is_causal = self._mask(stack, attention_mask, x.shape[1], past, x.dtype, x.device)
        return self._blocks(stack, x, mask, is_causal, cache, rotary, memory, memory_mask, need_weights)

    def _blocks(self, stack: Stack, x, mask, is_causal=False, cache=None, rotary=None,
                memory=None, memory_mask=None, need_weights=False):
        weights, cross_weights = [], []
        for block in stack.layers:
            x, w, cw = block(x, mask, is_causal, rotary, cache, memory, memory_mask, need_weights)
            weights.append(w)
            cross_weights.append(cw)
        if stack.norm is not None:
            x = stack.norm(x)
        return x, (tuple(weights) if need_weights else None), (tuple(cross_weights) if need_weights else None)

    def encode(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
               inputs_embeds=None, return_attentions=False):
        """Run the encoder stack: (B, T) -> hidden states (B, T, C), attentions."""
        T = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        device = self.device
        if position_ids is None and self.config.position in ("learned", "sinusoidal"):
            position_ids = self._positions(None, T, 0, device)
        x = self.embed(input_ids, position_ids, token_type_ids, inputs_embeds)
        h, attentions, _ = self._run(self.encoder, x, attention_mask, 0, need_weights=return_attentions)
        return h, attentions

    def _memory_mask(self, encoder_attention_mask, dtype):
        if encoder_attention_mask is None:
            return None
        return torch.zeros(encoder_attention_mask.shape, dtype=dtype, device=encoder_attention_mask.device
                           ).masked_fill(encoder_attention_mask == 0, torch.finfo(dtype).min)[:, None, None, :]

    def decode(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, cache=None,
               memory=None, memory_attention_mask=None, return_attentions=False):
        """Run the decoder stack (with cross-attention over `memory` for encoder-decoders)."""
        T = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        past = cache.length if cache is not None else 0
        if position_ids is None and self.config.position != "relative":
            position_ids = self._positions(attention_mask, T, past, self.device)
        x = self.embed(input_ids, position_ids, None, inputs_embeds)
        rotary = self.rotary(position_ids, x.dtype) if self.rotary is not None else None
        memory_mask = self._memory_mask(memory_attention_mask, x.dtype) if memory is not None else None
        h, weights, cross = self._run(self.decoder, x, attention_mask, past, cache, rotary,
                                      memory, memory_mask, return_attentions)
        if cache is not None:
            cache.advance(T, attention_mask)  # the mask, when given, tells each row's valid positions
        return h, weights, cross

    def decode_step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_bias: torch.Tensor,
                    cache) -> torch.Tensor:
        """One fixed-shape decoding step of a decoder-only model, the function that
        `gencycle.generation.compiled` hands to torch.compile.

        input_ids, position_ids: (B, 1); attention_bias: additive (B, 1, 1, S) over all S slots of
        `cache`, a StaticKVCache whose `position` (the slot this step writes) is set.
        Returns the next-token logits (B, V) in fp32. The cache's `length` is the caller's to advance.
        """
        x = self.embed(input_ids, position_ids)
        rotary = self.rotary(position_ids, x.dtype) if self.rotary is not None else None
        h, _, _ = self._blocks(self.decoder, x, attention_bias, cache=cache, rotary=rotary)
        return self.head(h)[:, -1].float()

    def head(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Hidden states (B, T, C) -> logits over the vocabulary (B, T, V)."""
        if self.mlm_transform is not None:
            hidden = self.mlm_transform(hidden)
        if self.lm_head is None:
            return None
        if self.config.scale_tied_logits and self.config.tie_embeddings:
            hidden = hidden * self.config.hidden_size ** -0.5
        return self.lm_head(hidden)

    # ------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,        # (B, T) token ids (encoder input for enc-dec)
        attention_mask: torch.Tensor | None = None,   # (B, S) 1 = token, 0 = padding; S = past + T
        *,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_attentions: bool = False,
        logits_to_keep: int = 0,                      # >0: compute logits for the last n positions only
    ) -> ModelOutput:
        cfg = self.config
        if cfg.architecture == "encoder":
            h, attentions = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                                        inputs_embeds, return_attentions)
            pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None
            return ModelOutput(self.head(h), h, attentions, pooled_output=pooled)

        if cfg.architecture == "decoder":
            h, attentions, _ = self.decode(input_ids, attention_mask, position_ids, inputs_embeds, cache,
                                           return_attentions=return_attentions)
            logits = self.head(_last(h, logits_to_keep))
            return ModelOutput(logits, h, attentions, cache=cache)

        # encoder-decoder
        encoder_attentions = None
        if encoder_hidden_states is None:
            encoder_hidden_states, encoder_attentions = self.encode(
                input_ids, attention_mask, inputs_embeds=inputs_embeds, return_attentions=return_attentions)
        if decoder_input_ids is None:
            raise ValueError("an encoder-decoder model needs decoder_input_ids "
                             f"(start with decoder_start_token_id={cfg.decoder_start_token_id})")
        h, attentions, cross = self.decode(decoder_input_ids, decoder_attention_mask, cache=cache,
                                           memory=encoder_hidden_states, memory_attention_mask=attention_mask,
                                           return_attentions=return_attentions)
        logits = self.head(_last(h, logits_to_keep))
        return ModelOutput(logits, h, attentions, encoder_attentions, cross, encoder_hidden_states, cache=cache)
