"""Prompt tuning (soft prompts): n trainable virtual tokens before the input (Lester et al., 2021).

    [p_1 .. p_n, e(x_1) .. e(x_T)] -> frozen transformer

`apply_prompt_tuning(model, num_virtual_tokens)` returns a `PromptTuningModel`: a
wrapper with the model's call signature whose only trainable parameter is
`prompt_embeddings` (n, C). Callers keep thinking in their own tokens:

- the wrapper prepends the soft prompt to the embeddings on the first (prefill)
  call and puts n ones before every attention mask it is given, prefill or not;
- decoder-only: `new_cache(batch, max_length)` reserves n extra positions, and a
  call with a non-empty cache (a decode step) adds no prompt — it is already in the cache;
- encoder-decoder: the prompt goes before the encoder input (what PEFT does at
  inference); `encode` returns n + T states, and a decoder call given those states
  with the caller's T-long mask has the mask extended to match;
- the outputs drop the virtual positions: logits and hidden states are (B, T, ...),
  as without the prompt (attention weights keep them).
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.transformer import ModelOutput


class PromptTuningModel(nn.Module):
    def __init__(self, model: nn.Module, num_virtual_tokens: int, prompt: torch.Tensor | None = None):
        super().__init__()
        if num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens}")
        self.model = model
        self.num_virtual_tokens = num_virtual_tokens
        C = model.config.hidden_size
        if prompt is None:
            prompt = torch.zeros(num_virtual_tokens, C)
        if tuple(prompt.shape) != (num_virtual_tokens, C):
            raise ValueError(f"soft prompt has shape {tuple(prompt.shape)}; expected ({num_virtual_tokens}, {C}) "
                             f"(num_virtual_tokens, hidden_size)")
        weight = model.embed_tokens.weight
        self.prompt_embeddings = nn.Parameter(prompt.detach().to(device=weight.device, dtype=weight.dtype).clone())

    def __getattr__(self, name: str):
        """Everything else (config, device, embed, head, save_pretrained ...) is the wrapped model's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(super().__getattr__("model"), name)

    # ------------------------------------------------------------ helpers
    def _prepend(self, input_ids, inputs_embeds) -> torch.Tensor:
        """(B, T) ids or (B, T, C) embeddings -> (B, n + T, C)."""
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        prompt = self.prompt_embeddings.to(inputs_embeds.dtype).expand(inputs_embeds.shape[0], -1, -1)
        return torch.cat([prompt, inputs_embeds], dim=1)

    def _extend(self, mask: torch.Tensor | None, fill: int = 1) -> torch.Tensor | None:
        """(B, S) -> (B, n + S) with `fill` in the virtual positions."""
        if mask is None:
            return None
        pad = torch.full((mask.shape[0], self.num_virtual_tokens), fill, dtype=mask.dtype, device=mask.device)
        return torch.cat([pad, mask], dim=1)

    def _strip(self, out: ModelOutput, T: int, logits_to_keep: int) -> ModelOutput:
        n = self.num_virtual_tokens
        if out.logits is not None:
            out.logits = out.logits[:, -min(logits_to_keep, T):] if logits_to_keep else out.logits[:, n:]
        out.hidden_states = out.hidden_states[:, n:]
        return out

    def new_cache(self, batch_size: int, max_length: int):
        """A KV cache for max_length of the caller's tokens (plus the virtual ones for decoders)."""
        extra = self.num_virtual_tokens if self.model.config.architecture == "decoder" else 0
        return self.model.new_cache(batch_size, max_length + extra)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------ forward
    def encode(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
               inputs_embeds=None, return_attentions=False):
        """Encoder states of [prompt, input]: (B, n + T, C), attentions."""
        x = self._prepend(input_ids, inputs_embeds)
        if token_type_ids is not None:
            token_type_ids = self._extend(token_type_ids, fill=0)
        if position_ids is not None:
            position_ids = self._shift(position_ids)
        return self.model.encode(None, self._extend(attention_mask), token_type_ids, position_ids, x,
                                 return_attentions)

    def _shift(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Caller's positions start after the prompt's 0..n-1."""
        n = self.num_virtual_tokens
        virtual = torch.arange(n, device=position_ids.device).expand(position_ids.shape[0], -1)
        return torch.cat([virtual, position_ids + n], dim=1)

    def forward(self, input_ids=None, attention_mask=None, *, token_type_ids=None, position_ids=None,
                inputs_embeds=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_hidden_states=None, cache=None, return_attentions=False, logits_to_keep=0) -> ModelOutput:
        architecture, n = self.model.config.architecture, self.num_virtual_tokens

        if architecture == "encoder-decoder":
            mask = attention_mask
            if encoder_hidden_states is None:
                encoder_hidden_states, _ = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds)
                mask = self._extend(attention_mask)
            elif mask is not None and encoder_hidden_states.shape[1] == mask.shape[1] + n:
                mask = self._extend(attention_mask)
            return self.model(attention_mask=mask, decoder_input_ids=decoder_input_ids,
                              decoder_attention_mask=decoder_attention_mask,
                              encoder_hidden_states=encoder_hidden_states, cache=cache,
                              return_attentions=return_attentions, logits_to_keep=logits_to_keep)

        T = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        if cache is not None and cache.length > 0:  # decode step: the prompt is in the cache already
            if position_ids is not None:
                position_ids = position_ids + n
            return self.model(input_ids, self._extend(attention_mask), position_ids=position_ids,
                              inputs_embeds=inputs_embeds, cache=cache, return_attentions=return_attentions,
                              logits_to_keep=logits_to_keep)
        x = self._prepend(input_ids, inputs_embeds)
        out = self.model(None, self._extend(attention_mask),
                         token_type_ids=None if token_type_ids is None else self._extend(token_type_ids, fill=0),
                         position_ids=None if position_ids is None else self._shift(position_ids),
                         inputs_embeds=x, cache=cache, return_attentions=return_attentions,
                         logits_to_keep=logits_to_keep)
        return self._strip(out, T, logits_to_keep)


def init_prompt(model: nn.Module, num_virtual_tokens: int, init: str = "random", init_text: str | None = None,
                tokenizer=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial soft prompt (n, C).

    "random": normal with the spread of the model's token embeddings;
    "vocab": embeddings of n random vocabulary tokens;
    "text": embeddings of `init_text`'s tokens, repeated or cut to n (PEFT's TEXT init).
    """
    weight = model.embed_tokens.weight.detach()
    n = num_virtual_tokens
    if init == "random":
        return torch.randn(n, weight.shape[1], generator=generator).to(weight) * weight.float().std().item()
    if init == "vocab":
        return weight[torch.randint(0, weight.shape[0], (n,), generator=generator).to(weight.device)].clone()
    if init == "text":
        if not init_text or tokenizer is None:
            raise ValueError("prompt-tuning init 'text' needs init_text and a tokenizer")
        ids = tokenizer.encode(init_text)
        if not ids:
            raise ValueError(f"init_text {init_text!r} encodes to no tokens")
        ids = (ids * (n // len(ids) + 1))[:n]
        return weight[torch.tensor(ids, device=weight.device)].clone()
    raise ValueError(f"unknown prompt-tuning init {init!r}; use random, vocab or text")


def apply_prompt_tuning(model: nn.Module, num_virtual_tokens: int = 20, init: str = "random",
                        init_text: str | None = None, tokenizer=None, seed: int | None = None) -> PromptTuningModel:
    """Wrap `model` with a trainable soft prompt; freeze all of the model's own parameters.

    Returns the wrapper: train it and call it in place of the model.
    """
    if isinstance(model, PromptTuningModel):
        raise ValueError("the model already has a soft prompt")
    if not isinstance(num_virtual_tokens, int) or num_virtual_tokens <= 0:
        raise ValueError(f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    prompt = init_prompt(model, num_virtual_tokens, init, init_text, tokenizer, generator)
    for param in model.parameters():
        param.requires_grad_(False)
    return PromptTuningModel(model, num_virtual_tokens, prompt)
