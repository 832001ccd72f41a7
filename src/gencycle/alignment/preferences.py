"""Preference pairs: (prompt, chosen, rejected) rows, read from files or made from a policy's samples.

    pairs = load_preferences("pairs.jsonl")      # rows {"prompt", "chosen", "rejected"[, "margin"]}
    pairs = sample_preference_pairs(policy, tokenizer, prompts, reward, samples_per_prompt=4)

A file is JSONL or CSV (`gencycle.data.files.read_rows`). `prompt` may be empty (the completions
then stand alone, as for a reward model over whole texts); `chosen` and `rejected` must be
non-empty and different. `margin` (optional, a number) is how much better `chosen` is: the
Bradley-Terry reward-model loss can ask for at least that gap (Llama 2's margin loss).

`sample_preference_pairs` is "best of n vs worst of n": each prompt is completed n times by the
policy itself (sampled through gencycle's generation), every completion is scored by a reward
(`reward(prompts, completions) -> list[float]`: a reward model, alt-profanity-check, any
callable), and the highest- and lowest-scored completions become (chosen, rejected). A prompt whose
n completions all score the same (or are all one text) has no preference and gives no pair.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from gencycle.data.files import read_rows
from gencycle.errors import UserError

FIELDS = ("prompt", "chosen", "rejected")


class PreferenceDataError(UserError):
    """A preference dataset is empty, or a row lacks a field, has an empty one, or prefers a text to itself."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None        # how much better chosen is (Bradley-Terry margin), when known
    chosen_score: float | None = None  # the reward of each side, for pairs made from samples
    rejected_score: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k in FIELDS}


def is_preference_record(record: dict) -> bool:
    return "chosen" in record or "rejected" in record


def to_preference_pairs(records: Sequence[dict], source: str = "data") -> list[PreferencePair]:
    """Rows -> PreferencePair, each row checked; errors name the source and the row (1-based)."""
    if not records:
        raise PreferenceDataError(f"{source}: the dataset is empty (no rows)")
    pairs = []
    for number, row in enumerate(records, start=1):
        if isinstance(row, PreferencePair):
            row = row.to_dict()
        if not isinstance(row, dict):
            raise PreferenceDataError(f"{source}: row {number} is a {type(row).__name__}, not a record "
                                      "with prompt, chosen and rejected")
        missing = [f for f in FIELDS if row.get(f) is None]
        if missing:
            raise PreferenceDataError(f"{source}: row {number} has no {', '.join(map(repr, missing))} field "
                                      f"(a preference row needs prompt, chosen and rejected); its fields: {sorted(row)}")
        prompt, chosen, rejected = (str(row[f]) for f in FIELDS)
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise PreferenceDataError(f"{source}: row {number} has an empty {name!r} completion")
        if chosen.strip() == rejected.strip():
            raise PreferenceDataError(f"{source}: row {number}: chosen and rejected are the same text "
                                      f"({_short(chosen)}); a preference pair needs two different completions")
        margin = row.get("margin")
        if margin not in (None, ""):
            try:
                margin = float(margin)
            except (TypeError, ValueError):
                raise PreferenceDataError(f"{source}: row {number}: margin must be a number, got {margin!r}") from None
            if not math.isfinite(margin):
                raise PreferenceDataError(f"{source}: row {number}: margin must be finite, got {margin}")
        else:
            margin = None
        scores = [row.get(k) for k in ("chosen_score", "rejected_score")]
        scores = [float(s) if isinstance(s, (int, float)) else None for s in scores]
        pairs.append(PreferencePair(prompt, chosen, rejected, margin, *scores))
    return pairs


def load_preferences(data: str | Path | Sequence[dict]) -> list[PreferencePair]:
    """Preference pairs from a .jsonl / .csv file or a list of records (or of PreferencePair)."""
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no preference data file at {str(path)!r}")
        return to_preference_pairs(read_rows(path, PreferenceDataError), source=str(path))
    return to_preference_pairs(list(data))


def write_preferences(pairs: Sequence[PreferencePair], path: str | Path) -> Path:
    import json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path


def load_prompts(data: str | Path | Sequence) -> list[str]:
    """Prompts: rows with a `prompt` field (JSONL / CSV), a .txt file (one per line), or a list of strings."""
    source = "prompts"
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no prompts file at {str(path)!r}")
        source = str(path)
        if path.suffix == ".txt":
            rows = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            rows = read_rows(path, PreferenceDataError)
    else:
        rows = list(data)
    if not rows:
        raise PreferenceDataError(f"{source}: no prompts (the file is empty)")
    prompts = []
    for number, row in enumerate(rows, start=1):
        text = row if isinstance(row, str) else row.get("prompt") if isinstance(row, dict) else None
        if text is None:
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise PreferenceDataError(f"{source}: row {number} has no 'prompt' field; its fields: {fields}")
        if not str(text).strip():
            raise PreferenceDataError(f"{source}: row {number} has an empty 'prompt'")
        prompts.append(str(text))
    return prompts


# ------------------------------------------------------------------ pairs from the policy's own samples
Reward = Callable[[list[str], list[str]], Sequence[float]]


def best_and_worst(completions: Sequence[str], scores: Sequence[float]) -> tuple[int, int] | None:
    """Indices of the highest- and lowest-scored completions (the first of ties), or None when there is no
    preference: every score equal, or the two texts the same."""
    best = max(range(len(scores)), key=lambda i: scores[i])
    worst = min(range(len(scores)), key=lambda i: scores[i])
    if scores[best] == scores[worst] or completions[best].strip() == completions[worst].strip():
        return None
    return best, worst


def sample_preference_pairs(model, tokenizer, prompts: Sequence[str], reward: Reward, samples_per_prompt: int = 4,
                            *, batch_size: int = 8, max_new_tokens: int = 48, temperature: float = 1.0,
                            top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                            chat_template: bool = False, progress: bool = True) -> list[PreferencePair]:
    """Best-of-n vs worst-of-n pairs from the model's own samples, scored by `reward`.

    Each prompt is sampled `samples_per_prompt` times (temperature / top_p / top_k, a fixed `seed`
    per batch of prompts); `reward(prompts, completions)` scores every completion (the prompt is
    repeated once per completion). With chat_template=True a prompt is sent as a user turn; the pair
    keeps the prompt as written in the data. Prompts without a preference are skipped (a warning
    says how many). Returns the pairs with each side's score.
    """
    from tqdm.auto import tqdm
    from gencycle.generation import LLM
    if not isinstance(samples_per_prompt, int) or samples_per_prompt < 2:
        raise UserError(f"samples_per_prompt must be an integer >= 2 (a pair needs two samples), "
                        f"got {samples_per_prompt!r}")
    prompts = list(prompts)
    if not prompts:
        raise PreferenceDataError("no prompts to sample from")
    llm = LLM(model, tokenizer)
    was_training = model.training
    model.eval()
    pairs, skipped = [], 0
    settings = dict(do_sample=True, num_return_sequences=samples_per_prompt, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, top_k=top_k)
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="sampling pairs", unit="batch", disable=not progress or len(starts) < 2):
            batch = prompts[start:start + batch_size]
            if chat_template:
                samples = llm.chat([[{"role": "user", "content": p}] for p in batch], seed=seed + start, **settings)
            else:
                samples = llm.generate(batch, seed=seed + start, **settings)
            for prompt, completions in zip(batch, samples):
                scores = _checked(reward([prompt] * len(completions), list(completions)), len(completions))
                chosen = best_and_worst(completions, scores)
                if chosen is None:
                    skipped += 1
                    continue
                best, worst = chosen
                pairs.append(PreferencePair(prompt, completions[best], completions[worst],
                                            chosen_score=scores[best], rejected_score=scores[worst]))
    finally:
        model.train(was_training)
    if skipped:
        warnings.warn(f"{skipped} of {len(prompts)} prompts gave no preference pair (all {samples_per_prompt} "
                      "samples scored the same, or were one text)", stacklevel=2)
    if not pairs:
        raise PreferenceDataError(f"none of the {len(prompts)} prompts gave a preference pair: every prompt's "
                                  "samples scored the same; sample more (samples_per_prompt) or hotter (temperature)")
    return pairs


def _checked(scores, count: int) -> list[float]:
    if hasattr(scores, "tolist"):
        scores = scores.tolist()
    scores = [float(s) for s in scores]
    if len(scores) != count:
        raise UserError(f"the reward returned {len(scores)} scores for {count} completions (one per completion)")
    if not all(math.isfinite(s) for s in scores):
        raise UserError("the reward returned a non-finite score (NaN or inf)")
    return scores


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")
