"""Training objectives: what a step computes from a batch.

A step function is `step_fn(model, batch) -> loss`: a scalar, the mean over the
batch's scored items. The trainer weighs micro-batches by `weight_fn(batch)` (the
number of scored tokens by default), so gradient accumulation and data-parallel
processes give the same gradient as one large batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, T', V) predict labels (B, T) shifted by one.

    Only positions whose label is not -100 count (completion tokens). When the model
    prepended P soft-prompt positions (T' = P + T), their logits are dropped.
    """
    logits = logits[:, logits.shape[1] - labels.shape[1]:]
    return _mean_nll(logits[:, :-1], labels[:, 1:])  # token t predicts token t+1


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of decoder logits (B, L, V) against the target ids (B, L); -100 ignored."""
    return _mean_nll(logits, labels)


def _mean_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over the scored targets (0, not NaN, when a batch has none). logits (B, T, V)."""
    scored = targets != IGNORE_INDEX                     # (B, T)
    nll = F.cross_entropy(logits[scored].float(), targets[scored], reduction="sum")  # (N, V) rows only
    return nll / scored.sum().clamp(min=1)


def lm_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fine-tuning step: causal-LM loss for decoders, target loss for encoder-decoders.

    The batch says which: encoder-decoder batches carry `decoder_input_ids`.
    """
    if "decoder_input_ids" in batch:
        out = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=batch["decoder_input_ids"])
        return seq2seq_loss(out.logits, batch["labels"])
    labels = batch["labels"]
    keep = logits_needed(labels)
    out = model(batch["input_ids"], batch["attention_mask"], logits_to_keep=keep if keep < labels.shape[1] else 0)
    return causal_lm_loss(out.logits, labels[:, -keep:])


def logits_needed(labels: torch.Tensor) -> int:
    """How many final positions need logits: from the one that predicts the first scored label on.

    Prompts come first, so a fine-tuning batch skips the output head (hidden x vocabulary, the
    largest matrix of a small model) and its softmax on most prompt positions. labels (B, T).
    """
    scored = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero()  # position j predicts label j + 1
    return labels.shape[1] - int(scored[0]) if scored.numel() else 1


def scored_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The weight of a batch in the mean: its scored label tokens (1 for label-free batches)."""
    labels = batch.get("labels")
    if labels is None:
        return 1
    if "decoder_input_ids" in batch:
        return int((labels != IGNORE_INDEX).sum())
    return int((labels[:, 1:] != IGNORE_INDEX).sum())  # the first label is never predicted


def processed_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model ran over (padding excluded): for tokens/s."""
    mask = batch.get("attention_mask")
    count = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    if "decoder_input_ids" in batch:
        count += int((batch["labels"] != IGNORE_INDEX).sum())
    return count
