"""Evaluation metrics: ROUGE, BLEU, chrF and perplexity.

ROUGE comes from Google's `rouge-score` package and BLEU / chrF from `sacrebleu`,
the reference implementations, so the numbers match what papers report. Scales
follow those packages: ROUGE is an F-measure in [0, 1]; BLEU and chrF are in
[0, 100].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import sacrebleu
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? followed by whitespace. Simpler than nltk's punkt
# (whose data cannot be downloaded here), and enough to give rougeLsum its
# "summary-level" LCS over sentences.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences on `.`, `!` or `?` followed by whitespace, and on newlines."""
    return [s for line in text.strip().splitlines() for s in _SENTENCE_END.split(line.strip()) if s]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean per-example ROUGE-1/2/L/Lsum F-measure, in [0, 1].

    Computed by `rouge_score.rouge_scorer.RougeScorer(..., use_stemmer=True)`;
    rougeLsum is scored on the sentences of `split_sentences` joined by newlines
    (its sentence separator). Averaging per-example F1 is what Hugging Face
    `evaluate` reports (it takes the bootstrap median of the same values).
    """
    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(_lsum_text(reference), _lsum_text(prediction))
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: total / len(predictions) for key, total in totals.items()}


def _lsum_text(text: str) -> str:
    # Newlines only change rougeLsum; rouge1/2/L tokenize on all whitespace alike.
    return "\n".join(split_sentences(text))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU in [0, 100], by `sacrebleu.corpus_bleu` (one reference per prediction)."""
    _check(predictions, references)
    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF in [0, 100], by `sacrebleu.corpus_chrf` (one reference per prediction)."""
    _check(predictions, references)
    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """All text-overlap metrics at once: rouge1..rougeLsum (0-1), bleu and chrf (0-100)."""
    return {**rouge(predictions, references), "bleu": bleu(predictions, references),
            "chrf": chrf(predictions, references)}


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 8,
               max_length: int | None = None, progress: bool = False) -> float:
    """Perplexity of a decoder-only model on texts: exp(mean next-token NLL over all tokens).

    `model(input_ids, attention_mask=mask)` must return an object with `.logits`
    of shape (B, T, V); token t is predicted from tokens < t. `tokenizer.encode(text)`
    gives the token ids (a list, or an object with `.ids`). Texts longer than
    `max_length` tokens are truncated; pass the model's context length. progress: a bar over batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    ids = [_encode(tokenizer, text)[:max_length] for text in texts]
    if sum(max(len(x) - 1, 0) for x in ids) == 0:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        starts = range(0, len(ids), batch_size)
        for start in tqdm(starts, desc="perplexity", unit="batch", leave=False, disable=not progress):
            batch = ids[start:start + batch_size]
            width = max(len(x) for x in batch)
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)  # right padding, masked out
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, x in enumerate(batch):
                input_ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)
                mask[row, :len(x)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids, attention_mask=mask).logits.float()  # (B, T, V)
            targets = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (B, T-1)
            total_nll += F.cross_entropy(logits[:, :-1].transpose(1, 2), targets,
                                         ignore_index=-100, reduction="sum").item()
            total_tokens += int(mask[:, 1:].sum())
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)


def _encode(tokenizer, text: str) -> list[int]:
    encoded = tokenizer.encode(text)
    return list(getattr(encoded, "ids", encoded))
