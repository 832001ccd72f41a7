"""Decoding loops over the model's KV cache: greedy and random sampling (beam search: beam.py).

    ids = generate(model, input_ids, attention_mask, max_new_tokens=20)        # like transformers
    ids = generate(model, input_ids, attention_mask, do_sample=True, top_p=0.9)

Decoder-only models return prompt + new tokens; encoder-decoders return the decoder sequence,
starting with `decoder_start_token_id`. Finished rows are padded with `pad_token_id`.
Prompts of different lengths are left-padded with an attention mask; each step feeds only the
newest token, and a finished row is dropped from the batch (and its cache) so it costs nothing.
"""

from __future__ import annotations

import torch

from .beam import beam_search
from .compiled import CompiledDecodeState
from .config import GenerationConfig
from .processors import process
from .state import DecodeState
from .stopping import StopStrings


def resolve_config(model, config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """The config to run: `config` (or the model's `generation_config`, or the defaults) with
    `overrides` applied, and EOS / padding ids filled in from the model where unset."""
    base = config if config is not None else getattr(model, "generation_config", None) or GenerationConfig()
    if not isinstance(base, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig, got {type(base).__name__}")
    base = base.replace(**overrides) if overrides else base
    eos = base.eos_token_id if base.eos_token_id is not None else tuple(model.config.eos_token_ids)
    pad = base.pad_token_id if base.pad_token_id is not None else model.config.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    return base.replace(eos_token_id=eos, pad_token_id=pad)


def prepare_inputs(model, input_ids, attention_mask, config: GenerationConfig):
    """Check the prompt batch; returns ids (B, T), mask (B, T) or None, and the config with
    max_new_tokens capped to the context window."""
    if not model.config.has_decoder:
        raise ValueError("an encoder-only model cannot generate text; use a decoder or encoder-decoder model")
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.device)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(ids.shape)}")
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask, dtype=torch.long, device=model.device)
        mask = mask[None] if mask.dim() == 1 else mask
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}")
        if model.config.architecture == "decoder" and not bool(mask[:, -1].all()):
            raise ValueError("decoder-only generation needs left padding: every prompt must end at the last "
                             "column (tokenize with padding_side='left')")
    if model.config.architecture == "decoder" and model.config.position != "relative":
        window = model.config.max_position_embeddings
        if ids.shape[1] > window:
            raise ValueError(f"prompt of {ids.shape[1]} tokens is longer than the model's context window "
                             f"of {window} tokens")
        if ids.shape[1] + config.max_new_tokens > window:
            config = config.replace(max_new_tokens=window - ids.shape[1])
    return ids, mask, config


def decode_state(model, input_ids, attention_mask, max_new_tokens: int):
    """The state for a greedy / sampling loop: compiled steps when `compile_decoding(model)` was
    called (gencycle.generation.compiled), otherwise eager."""
    if getattr(model, "compiled_decoding", None) is not None and not torch.is_grad_enabled():
        return CompiledDecodeState(model, input_ids, attention_mask, max_new_tokens)
    return DecodeState(model, input_ids, attention_mask, max_new_tokens)


def make_generator(config: GenerationConfig, device) -> torch.Generator | None:
    """A private random generator (re-entrant: no global RNG state), seeded by `config.seed`."""
    if config.greedy:
        return None
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator


def pick(scores: torch.Tensor, config: GenerationConfig, generator) -> torch.Tensor:
    """Next token per row from processed scores (N, V): arg-max, or a draw from softmax(scores)."""
    if config.greedy:
        return scores.argmax(dim=-1)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)


def sample_steps(state: DecodeState, config: GenerationConfig, generator=None, stop: StopStrings | None = None):
    """The greedy / sampling loop. Yields (rows, tokens) each step: rows (A,) are the indices of the
    rows still running, tokens (A,) their next token. A row ends at EOS or a stop string."""
    seqs = state.start                                           # (A, T) sequences so far
    T = seqs.shape[1]
    rows, padding = torch.arange(seqs.shape[0], device=seqs.device), state.padding
    eos = torch.tensor(config.eos_token_ids, dtype=torch.long, device=seqs.device)
    if config.max_new_tokens == 0:
        return
    logits = state(seqs)                                         # prefill: the whole prompt at once
    for step in range(config.max_new_tokens):
        scores = process(logits, seqs, config, step, config.eos_token_ids, padding)
        tokens = pick(scores, config, generator)                 # (A,)
        seqs = torch.cat([seqs, tokens[:, None]], dim=1)
        yield rows, tokens
        done = torch.isin(tokens, eos)
        if stop is not None:
            done |= stop(seqs[:, T:])
        if step + 1 == config.max_new_tokens or bool(done.all()):
            return
        if bool(done.any()):                                     # drop finished rows from the batch
            keep = (~done).nonzero().squeeze(1)
            rows, seqs, tokens = rows[keep], seqs[keep], tokens[keep]
            padding = padding[keep] if padding is not None else None
            state.select(keep)
        logits = state(tokens[:, None])


@torch.inference_mode()
def generate(model, input_ids, attention_mask=None, config: GenerationConfig | None = None, *,
             tokenizer=None, **overrides) -> torch.Tensor:
    """Generate token ids, as `transformers`' `model.generate` returns them.

    input_ids, attention_mask: (B, T), left-padded for decoder-only models. `tokenizer` is needed
    only for stop strings. Returns (B * num_return_sequences, T + new) for decoder-only models,
    (B * num_return_sequences, 1 + new) decoder ids for encoder-decoders.
    """
    config = resolve_config(model, config, **overrides)
    ids, mask, config = prepare_inputs(model, input_ids, attention_mask, config)
    stop = StopStrings(tokenizer, config.stop) if config.stop else None
    if config.num_beams > 1 and config.max_new_tokens > 0:
        return beam_search(model, ids, mask, config, stop)
    n = config.num_return_sequences
    if n > 1:
        ids = ids.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0) if mask is not None else None
    state = decode_state(model, ids, mask, config.max_new_tokens)
    start = state.start
    T = start.shape[1]
    out = torch.full((start.shape[0], T + config.max_new_tokens), config.pad_token_id, dtype=torch.long,
                     device=start.device)
    out[:, :T] = start
    steps = 0
    for steps, (rows, tokens) in enumerate(sample_steps(state, config, make_generator(config, start.device), stop), 1):
        out[rows, T + steps - 1] = tokens
    return out[:, :T + steps]
