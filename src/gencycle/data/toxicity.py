"""chitchat-toxicity: real chat messages labelled toxic / non-toxic by alt-profanity-check.

The texts are real: the 258,145 messages of the 7,168 human-to-human chats of chitchat-dataset
(PyPI `chitchat-dataset` 0.9.0, MIT). The labels are *derived*, not human: each message is
labelled by alt-profanity-check (PyPI, MIT), a TF-IDF + linear-SVM offensive-language classifier
trained on human-labelled data (the Davidson et al. hate-speech tweets and the Jigsaw toxic
comments). A message is `toxic` (label 1) when its P(offensive) > 0.5 (1.7% of all messages),
else `non-toxic` (label 0). See DATA_CARD (written next to the files by `write_toxicity_dataset`).

    records = toxicity_records("train")     # [{"text", "label", "score", "conv_id"}, ...]
    write_toxicity_dataset("runs/chitchat-toxicity")   # train / validation / test .jsonl + README.md
    gencycle reward train all-minilm-l6-v2 --data chitchat-toxicity --out runs/toxicity-rm

A reward model trained on this set learns alt-profanity-check's judgement (words more than
meaning), in a transformer that can be fine-tuned, run on a GPU, and read token by token.

The chats themselves (`chitchat_conversations`) and the labeller (`offensive_probability`) are
shared with the detoxification lab (`gencycle.data.detox`), which picks its prompts from them.
"""

from __future__ import annotations

import importlib.util
import json
import random
from functools import lru_cache
from pathlib import Path

LABELS = {0: "non-toxic", 1: "toxic"}
THRESHOLD = 0.5
SPLITS = ("train", "validation", "test")
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}  # of the conversations
NEGATIVES_PER_POSITIVE = 3
SEED = 0

DATA_CARD = """\
# chitchat-toxicity: chat messages with toxicity labels derived from alt-profanity-check

| split | messages | toxic | non-toxic | conversations |
|---|---|---|---|---|
{rows}

Columns: `text` (one chat message, as written), `label` (1 = `toxic`, 0 = `non-toxic`),
`score` (alt-profanity-check's P(offensive) of the text), `conv_id` (the source conversation).

**Texts.** Real messages of human-to-human chats from
[chitchat-dataset](https://pypi.org/project/chitchat-dataset/) 0.9.0 (BYU PCC lab, MIT license),
unedited. Duplicates (same text up to case and spacing) are kept once.

**Labels: derived, not human.** Every message was scored by
[alt-profanity-check](https://pypi.org/project/alt-profanity-check/) 1.9.1 (MIT), a TF-IDF +
calibrated linear-SVM offensive-language classifier trained on human-labelled data (the Davidson et
al. hate-speech tweets and the Jigsaw toxic comments). `toxic` means its P(offensive) > {threshold};
no person read these labels. They carry the labeller's errors: it knows words, not meaning (a
friendly "that's so stupid lol" is toxic to it, a polite insult is not), so a model trained here
learns alt-profanity-check's judgement, and accuracy on the test split measures agreement with it.

**Selection.** Conversations are split {fractions} (train / validation / test) with seed {seed}, so
no conversation gives messages to two splits. Each split holds all its toxic messages and
{negatives} times as many non-toxic ones drawn at random (seed {seed}): about a quarter of the
rows are toxic, against 1.7% of all chitchat messages.

Rebuild: `python -c "from gencycle.data.toxicity import write_toxicity_dataset as w; w('DIR')"`
(`gencycle/data/toxicity.py`; a few seconds).
"""


class ToxicityDataError(ValueError):
    """The source data (chitchat-dataset) or the labeller (alt-profanity-check) is not installed."""


def chitchat_file() -> Path:
    """chitchat-dataset's dataset.json, found without importing the package."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ToxicityDataError("chitchat-toxicity needs the chitchat-dataset package: "
                                "pip install --no-deps chitchat-dataset==0.9.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
    if not path.is_file():
        raise ToxicityDataError(f"chitchat-dataset is installed but has no {path}")
    return path


@lru_cache(maxsize=1)
def chitchat_conversations() -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """Every chat as (conv_id, ((sender, text), ...)), messages in order, conversations sorted by id."""
    raw = json.loads(chitchat_file().read_text(encoding="utf-8"))
    chats = []
    for conv_id in sorted(raw):
        messages = tuple((m.get("sender", ""), m.get("text", "")) for turn in raw[conv_id]["messages"] for m in turn)
        chats.append((conv_id, messages))
    return tuple(chats)


def offensive_probability(texts: list[str]) -> list[float]:
    """alt-profanity-check's P(offensive) of each text."""
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise ToxicityDataError("the toxicity labels need alt-profanity-check: pip install 'gencycle[align]'") from None
    return [float(p) for p in predict_prob(list(texts))] if texts else []


def _key(text: str) -> str:
    return " ".join(text.split()).lower()


@lru_cache(maxsize=4)
def toxicity_splits(threshold: float = THRESHOLD, negatives_per_positive: int = NEGATIVES_PER_POSITIVE,
                    seed: int = SEED) -> dict[str, tuple[dict, ...]]:
    """{split: rows}: conversations split by FRACTIONS, unique messages labelled, negatives sampled."""
    chats = list(chitchat_conversations())
    random.Random(seed).shuffle(chats)
    bounds, start = {}, 0
    for split in SPLITS:
        count = round(FRACTIONS[split] * len(chats)) if split != SPLITS[-1] else len(chats) - start
        bounds[split] = chats[start:start + count]
        start += count
    seen: set[str] = set()
    unique: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:  # a text seen in an earlier split is not repeated in a later one
        rows = []
        for conv_id, messages in bounds[split]:
            for _, text in messages:
                key = _key(text)
                if len(key) >= 2 and key not in seen:
                    seen.add(key)
                    rows.append((conv_id, text.strip()))
        unique[split] = rows
    out = {}
    for split in SPLITS:
        rows = unique[split]
        scores = offensive_probability([text for _, text in rows])
        toxic = [i for i, s in enumerate(scores) if s > threshold]
        clean = [i for i, s in enumerate(scores) if s <= threshold]
        rng = random.Random(f"{seed}-{split}")
        picked = toxic + rng.sample(clean, min(len(clean), negatives_per_positive * len(toxic)))
        rng.shuffle(picked)
        out[split] = tuple({"text": rows[i][1], "label": int(scores[i] > threshold),
                            "score": round(scores[i], 6), "conv_id": rows[i][0]} for i in picked)
    return out


def toxicity_records(split: str = "train") -> list[dict]:
    """The rows of one split (train, validation, test) as dicts (a fresh copy)."""
    if split not in SPLITS:
        raise ValueError(f"unknown chitchat-toxicity split {split!r}; use one of {', '.join(SPLITS)}")
    return [dict(row) for row in toxicity_splits()[split]]


def data_card(splits: dict[str, tuple[dict, ...]] | None = None) -> str:
    splits = splits or toxicity_splits()
    rows = []
    for split in SPLITS:
        data = splits[split]
        toxic = sum(r["label"] for r in data)
        rows.append(f"| {split} | {len(data):,} | {toxic:,} | {len(data) - toxic:,} | "
                    f"{len({r['conv_id'] for r in data}):,} |")
    fractions = " / ".join(f"{FRACTIONS[s]:.0%}" for s in SPLITS)
    return DATA_CARD.format(rows="\n".join(rows), threshold=THRESHOLD, fractions=fractions, seed=SEED,
                            negatives=NEGATIVES_PER_POSITIVE)


def write_toxicity_dataset(folder: str | Path) -> Path:
    """Write train.jsonl, validation.jsonl, test.jsonl and README.md (the data card) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = toxicity_splits()
    for split in SPLITS:
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in splits[split]),
                                               encoding="utf-8")
    (folder / "README.md").write_text(data_card(splits), encoding="utf-8")
    return folder
