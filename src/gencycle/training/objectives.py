"""Training objectives: what a step computes from a batch.

A step function is `step_fn(model, batch) -> loss`: a scalar, the mean over the
batch's scored items. The trainer weighs micro-batches by `weight_fn(batch)` (the
number of scored tokens by default), so gradient accumulation and data-parallel
processes give the same gradient as one large batch.

    objective                 step                   weight_fn        batches from
    causal LM / fine-tuning   lm_step                scored_tokens    data.Collator
    masked LM (BERT)          masked_lm_step         masked_tokens    pretraining_objectives.MLMCollator
    span corruption (T5)      span_corruption_step   scored_tokens    pretraining_objectives.SpanCorruptionCollator
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


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of encoder logits (B, T, V) at the masked positions: labels (B, T), -100 elsewhere."""
    return _mean_nll(logits, labels)  # no shift: position t predicts its own token


def lm_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fine-tuning step: causal-LM loss for decoders, target loss for encoder-decoders.

    The batch says which: encoder-decoder batches carry `decoder_input_ids`.
    """
    if "decoder_input_ids" in batch:
        return seq2seq_step(model, batch)
    labels = batch["labels"]
    keep = logits_needed(labels)
    out = model(batch["input_ids"], batch["attention_mask"], logits_to_keep=keep if keep < labels.shape[1] else 0)
    return causal_lm_loss(out.logits, labels[:, -keep:])


def seq2seq_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Encoder-decoder step: the encoder reads input_ids, the decoder the labels shifted right
    (`decoder_input_ids`), and the loss is over the labels (-100 ignored)."""
    out = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=batch["decoder_input_ids"])
    return seq2seq_loss(out.logits, batch["labels"])


def masked_lm_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The masked-LM pretraining step (BERT) over an `MLMCollator` batch: weigh it with `masked_tokens`.

    The model is an encoder with an MLM head (`ModelConfig(mlm_head=True)`); every position's
    logits are computed (one forward, so DDP / FSDP wrappers see the call), the masked ones scored.
    """
    out = model(batch["input_ids"], batch["attention_mask"])
    if out.logits is None:
        raise ValueError("masked_lm_step needs logits over the vocabulary: an encoder with "
                         "ModelConfig(mlm_head=True), not a headless one")
    return masked_lm_loss(out.logits, batch["labels"])


span_corruption_step = seq2seq_step  # T5's pretraining: a `SpanCorruptionCollator` batch through the seq2seq loss


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


def masked_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The weight of a masked-LM batch: its masked positions (every label counts; none is shifted away)."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


def processed_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model ran over (padding excluded): for tokens/s."""
    mask = batch.get("attention_mask")
    count = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    if "decoder_input_ids" in batch:
        count += int((batch["labels"] != IGNORE_INDEX).sum())
    return count
