"""Logits processors: small pure functions scores (N, V) -> scores (N, V).

`process` composes them in the order Hugging Face `transformers` applies them:

    repetition penalty -> no-repeat n-gram -> min length (block EOS)        # every mode
    -> presence / frequency penalties (OpenAI's, over the generated tokens)
    -> temperature -> top-k -> top-p -> min-p                               # sampling only

The first four reshape what the model said; the last four shape the distribution the
sampler draws from. A removed token gets -inf, so softmax gives it probability 0.
N = rows (batch x beams), T = tokens so far, V = vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import GenerationConfig


def repetition_penalty(scores: torch.Tensor, ids: torch.Tensor, penalty: float,
                       padding: torch.Tensor | None = None) -> torch.Tensor:
    """Make every token already in `ids` (N, T) less likely: positive scores / penalty, negative * penalty.

    padding (N,): how many leading positions of each row are left padding (not counted).
    """
    if penalty == 1.0:
        return scores
    V = scores.shape[1]
    if padding is not None:  # padding points at a spare column V, dropped at the end
        ids = ids.masked_fill(torch.arange(ids.shape[1], device=ids.device) < padding[:, None], V)
    scores = F.pad(scores, (0, 1))
    seen = scores.gather(1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, ids, seen)[:, :V]


def no_repeat_ngram(scores: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Block each token that would complete an n-gram already present in `ids` (N, T)."""
    N, T = ids.shape
    if n == 0 or T < n:
        return scores
    V = scores.shape[1]
    windows = ids.unfold(1, n, 1)                                    # (N, T-n+1, n): every n-gram
    last = ids[:, T - n + 1:]                                        # (N, n-1): the current prefix
    match = (windows[:, :, :-1] == last[:, None, :]).all(-1)         # (N, T-n+1) n-grams starting like it
    banned = torch.where(match, windows[:, :, -1], V)                # V: a spare column for "none"
    hit = torch.zeros(N, V + 1, dtype=torch.bool, device=ids.device).scatter_(1, banned, True)
    return scores.masked_fill(hit[:, :V], -torch.inf)


def min_new_tokens(scores: torch.Tensor, generated: int, minimum: int, eos_ids: list[int]) -> torch.Tensor:
    """Forbid EOS while fewer than `minimum` tokens have been generated."""
    if generated >= minimum or not eos_ids:
        return scores
    scores = scores.clone()
    scores[:, eos_ids] = -torch.inf
    return scores


def token_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each token occurs in each row of ids (N, t): (N, V) float."""
    counts = torch.zeros(ids.shape[0], vocab_size, device=ids.device)
    return counts.scatter_add_(1, ids, torch.ones(ids.shape, device=ids.device))


def presence_frequency_penalty(scores: torch.Tensor, counts: torch.Tensor, presence: float | torch.Tensor,
                               frequency: float | torch.Tensor) -> torch.Tensor:
    """OpenAI's additive penalties: logit[j] - counts[j] * frequency - (counts[j] > 0) * presence.

    counts (N, V): how often each token was generated so far (`token_counts`); presence, frequency:
    numbers, or (N, 1) tensors (one value per row). Positive values discourage repeats.
    """
    return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence


def temperature(scores: torch.Tensor, t: float) -> torch.Tensor:
    """softmax(scores / t): t < 1 sharpens, t > 1 flattens, t = 1 leaves it unchanged."""
    return scores if t == 1.0 else scores / t


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores of each row (ties with the k-th kept too); k = 0 keeps all."""
    if k == 0 or k >= scores.shape[1]:
        return scores
    kth = scores.topk(k, dim=1).values[:, -1:]                       # (N, 1)
    return scores.masked_fill(scores < kth, -torch.inf)


def top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability mass reaches p."""
    if p >= 1.0:
        return scores
    ordered, order = scores.sort(dim=1, descending=False)            # least likely first, as HF does
    mass_up_to = ordered.softmax(dim=1).cumsum(dim=1)                # (N, V)
    drop = mass_up_to <= 1 - p                                       # the tail holding at most 1 - p
    drop[:, -1] = False                                              # the most likely token always stays
    return scores.masked_fill(drop.scatter(1, order, drop), -torch.inf)


def min_p(scores: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Keep the tokens whose probability is at least p x the most likely token's; p = 0 keeps all.
    p: a number, or an (N, 1) tensor (one value per row)."""
    if not isinstance(p, torch.Tensor) and p <= 0.0:
        return scores
    probs = scores.softmax(dim=1)
    return scores.masked_fill(probs < p * probs.max(dim=1, keepdim=True).values, -torch.inf)


def process(scores: torch.Tensor, ids: torch.Tensor, config: GenerationConfig, generated: int,
            eos_ids: list[int], padding: torch.Tensor | None = None, warp: bool = True) -> torch.Tensor:
    """Apply the configured processors to scores (N, V) given the sequences so far `ids` (N, T).

    `generated`: tokens generated so far (the same for every row): the last `generated` columns of
    `ids`, which the presence / frequency penalties count. `padding` (N,): left padding of each row,
    which the repetition penalty skips. `warp`: apply the sampling processors (temperature, top-k,
    top-p, min-p) when the config samples.
    """
    scores = repetition_penalty(scores, ids, config.repetition_penalty, padding)
    scores = no_repeat_ngram(scores, ids, config.no_repeat_ngram_size)
    scores = min_new_tokens(scores, generated, config.min_new_tokens, eos_ids)
    if config.presence_penalty or config.frequency_penalty:
        counts = token_counts(ids[:, ids.shape[1] - generated:], scores.shape[1])
        scores = presence_frequency_penalty(scores, counts, config.presence_penalty, config.frequency_penalty)
    if warp and not config.greedy:
        scores = temperature(scores, config.temperature)
        scores = top_k(scores, config.top_k)
        scores = top_p(scores, config.top_p)
        scores = min_p(scores, config.min_p)
    return scores
