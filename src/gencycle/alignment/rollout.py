"""PPO rollouts: sample responses in batches, then score each sampled token under the policy and
the reference in one batched forward each.

    batch = sample(policy_lm, prompt_ids, GenerationConfig(do_sample=True, max_new_tokens=32, seed=s))
    out = score_tokens(policy_lm, batch, value_head=head.score)        # logprobs, values, entropy
    with disable_adapters(policy_lm):
        ref = score_tokens(policy_lm, batch)                             # the reference: adapters off

B rows, T prompt positions, R response positions (the longest response of the batch), V the
vocabulary. A `ResponseBatch` holds the token ids both model kinds need:

    decoder-only     input_ids (B, T + R) = [left-padded prompt | response | right padding]
                     the logits at positions T - 1 ... T + R - 2 predict the R response tokens
    encoder-decoder  input_ids (B, T) = the prompt, right-padded, for the encoder;
                     decoder_input_ids (B, 1 + R) = [decoder start | response]; the decoder's logits
                     at positions 0 ... R - 1 predict the response tokens

`response_mask` (B, R) is true from the first response token up to and including the first EOS
(a response that ends at EOS keeps it: the policy chose to stop); after it, padding. Every row has
at least one response token. The value of token t is the critic's estimate at the position whose
logits predict it (the state before the token is chosen), as in TRL's PPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gencycle.errors import UserError

from .losses import sequence_logprobs


@dataclass
class ResponseBatch:
    input_ids: torch.Tensor                     # (B, T + R) decoder-only; (B, T) encoder input
    attention_mask: torch.Tensor                # same shape as input_ids
    response_ids: torch.Tensor                  # (B, R), padding after each response's end
    response_mask: torch.Tensor                 # (B, R) bool: the response tokens (EOS included)
    decoder_input_ids: torch.Tensor | None = None  # (B, 1 + R) encoder-decoder only

    @property
    def encoder_decoder(self) -> bool:
        return self.decoder_input_ids is not None

    @property
    def response_length(self) -> int:
        return self.response_ids.shape[1]

    def rows(self, index: torch.Tensor) -> "ResponseBatch":
        """The batch of rows `index` (a mini-batch); widths stay as they are."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return ResponseBatch(pick(self.input_ids), pick(self.attention_mask), pick(self.response_ids),
                             pick(self.response_mask), pick(self.decoder_input_ids))

    def responses(self) -> list[list[int]]:
        """Each row's response tokens (its EOS included), as lists."""
        return [row[:int(n)].tolist() for row, n in zip(self.response_ids, self.response_mask.sum(-1))]


@dataclass
class TokenScores:
    logprobs: torch.Tensor               # (B, R) fp32: log p(token) under the model, 0 where masked
    values: torch.Tensor | None = None   # (B, R) fp32: the critic's values (value_head given)
    entropy: torch.Tensor | None = None  # (B, R) fp32: entropy of the model's next-token distribution


def pad_prompts(prompt_ids: list[list[int]], pad_token_id: int, side: str,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> ids, mask (B, T), padded on `side` ("left" for decoders' generation)."""
    if not prompt_ids or any(len(ids) == 0 for ids in prompt_ids):
        empty = [i for i, ids in enumerate(prompt_ids) if len(ids) == 0]
        raise UserError(f"prompts must have at least one token (empty rows: {empty})" if prompt_ids
                         else "no prompts to sample from")
    width = max(map(len, prompt_ids))
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(prompt_ids):
        span = slice(width - len(tokens), width) if side == "left" else slice(0, len(tokens))
        ids[row, span] = torch.tensor(tokens, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def response_mask(response_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """(B, R) ids -> (B, R) bool: true up to and including each row's first EOS (all true without one)."""
    if response_ids.shape[1] == 0:
        raise UserError("the responses are empty (0 tokens): max_new_tokens must be at least 1")
    eos = torch.tensor(list(eos_token_ids) or [-1], device=response_ids.device)
    is_eos = torch.isin(response_ids, eos).long()
    before = is_eos.cumsum(-1) - is_eos   # EOS tokens strictly before each position
    return before == 0


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], config) -> ResponseBatch:
    """Sample one response per prompt with gencycle's generation (batched; LoRA adapters as they are).

    model: a Transformer (decoder-only or encoder-decoder, adapters active or not); prompt_ids: one
    token-id list per prompt; config: a GenerationConfig (do_sample=True, top_k, top_p,
    temperature, min / max new tokens, seed). The model's train / eval mode is left as it was.
    """
    from gencycle.generation import generate, resolve_config
    config = resolve_config(model, config)
    if config.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1 (a response of 0 tokens has nothing to "
                         f"reward), got {config.max_new_tokens}")
    arch = model.config.architecture
    ids, mask = pad_prompts(prompt_ids, config.pad_token_id, "right" if arch == "encoder-decoder" else "left",
                            model.device)
    out = generate(model, ids, mask, config).clone()  # clone: a normal tensor, not an inference-mode one
    if arch == "encoder-decoder":
        responses = out[:, 1:]
        if responses.shape[1] == 0:
            raise UserError("the model generated no token (max_new_tokens reached 0)")
        rmask = response_mask(responses, config.eos_token_ids)
        responses = responses.masked_fill(~rmask, config.pad_token_id)
        return ResponseBatch(ids, mask, responses, rmask, out[:, :1 + responses.shape[1]].masked_fill(
            torch.cat([torch.ones_like(rmask[:, :1]), rmask], 1) == 0, config.pad_token_id))
    T = ids.shape[1]
    responses = out[:, T:]
    if responses.shape[1] == 0:
        raise UserError(f"no room for a response: the prompts fill the context window "
                         f"({model.config.max_position_embeddings} tokens); shorten them")
    rmask = response_mask(responses, config.eos_token_ids)
    responses = responses.masked_fill(~rmask, config.pad_token_id)
    return ResponseBatch(torch.cat([ids, responses], 1), torch.cat([mask, rmask.long()], 1), responses, rmask)


def score_tokens(model, batch: ResponseBatch, value_head: torch.nn.Module | None = None, *,
                 temperature: float = 1.0, entropy: bool = False) -> TokenScores:
    """Log-probabilities of the response tokens under `model` in one batched forward; gradients flow
    when enabled (the PPO update), so wrap in torch.no_grad() for rollouts.

    value_head: a Linear(C, 1) read on the same hidden states (the critic sharing the policy's trunk);
    temperature: the logits are divided by it first (the distribution the rollout sampled from);
    entropy: also the entropy of each position's distribution (no gradient).
    """
    R = batch.response_length
    if batch.encoder_decoder:
        out = model(batch.input_ids, batch.attention_mask, decoder_input_ids=batch.decoder_input_ids[:, :-1])
        logits, hidden = out.logits, out.hidden_states                # (B, R, V), (B, R, C)
    else:
        out = model(batch.input_ids, batch.attention_mask, logits_to_keep=R + 1)
        logits = out.logits[:, :-1]                                    # (B, R, V): they predict the response
        hidden = out.hidden_states[:, -R - 1:-1]                       # (B, R, C)
    if temperature != 1.0:
        logits = logits / temperature
    _, token_logps = sequence_logprobs(logits, batch.response_ids, batch.response_mask)
    values = None
    if value_head is not None:
        values = torch.where(batch.response_mask, value_head(hidden).squeeze(-1).float(), 0)
    ent = _entropy(logits, batch.response_mask) if entropy else None
    return TokenScores(token_logps, values, ent)


@torch.no_grad()
def _entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, R, V) logits -> (B, R) entropy in nats, row by row (one fp32 copy of a row at a time)."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    for row in range(logits.shape[0]):
        logp = torch.log_softmax(logits[row].float(), -1)      # (R, V)
        out[row] = -(logp.exp() * logp).sum(-1)
    return torch.where(mask, out, 0)
