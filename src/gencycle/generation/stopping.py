"""When a sequence ends: an EOS token, or a stop string appearing in the generated text.

Stop strings are checked on text, not tokens, so a stop string spanning several tokens
(or in the middle of one) is found. The text before the stop string is the answer.
"""

from __future__ import annotations

import torch


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def partial_stop_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string (to hold back)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    index = find_stop(text, stops)
    return text if index is None else text[:index]


def cut_at_eos(ids: list[int], eos_ids) -> list[int]:
    """The ids before the first EOS."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[:i]
    return ids


class StopStrings:
    """Checks rows of generated ids (N, t) for stop strings in their decoded text."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        if tokenizer is None:
            raise ValueError("stop strings need a tokenizer to read the text: pass tokenizer=...")
        self.tokenizer, self.stops = tokenizer, stops

    def text(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        """generated (N, t) -> (N,) bool: the row's text contains a stop string."""
        hits = [find_stop(self.text(row), self.stops) is not None for row in generated.tolist()]
        return torch.tensor(hits, dtype=torch.bool, device=generated.device)
