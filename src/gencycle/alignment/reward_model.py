"""Reward models: a classification head on any backbone, trained from labelled text or preference pairs.

    rm = load_reward_model("runs/toxicity-rm/model")    # a sequence-classification folder + its tokenizer
    rm.score(["you are lovely", "you idiot"])            # (2, num_labels) fp32 logits
    rm.label_index("non-toxic")                          # which column a reward reads

The model is a `gencycle.model.heads.SequenceClassifier`: the last real token of a decoder
(Llama, Qwen2, GPT-2), BERT's tanh pooler or the mean over tokens (MiniLM), the mean over a T5
*encoder*'s states. It saves as a Hugging Face sequence-classification folder
(`gencycle.checkpoints.classification`) with its tokenizer next to it.

Two objectives, told apart by the data's fields:

    text, label                  cross-entropy over num_labels >= 2 classes  (`classification_step`)
    prompt, chosen, rejected     Bradley-Terry on one scalar (num_labels = 1) (`bradley_terry_step`):
                                 loss = -log sigmoid(r_chosen - r_rejected - margin)
                                        + center_rewards * mean((r_chosen + r_rejected)^2)

(the margin from each row's optional `margin` field; reward centering keeps the scalar's mean
near 0, Eisenstein et al. 2023). Both reuse the training loop; `MetricsTrainer` adds the step
function's own figures (accuracy, margins) to every step's record in metrics.jsonl.

Rewards read text. A policy's token ids mean nothing in another vocabulary: to score a policy's
samples, decode them with the policy's tokenizer and call `score(texts)`; `score_ids` takes ids
only from a tokenizer with this model's vocabulary, and refuses others with a message saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from gencycle.errors import UserError
from gencycle.training.loop import Trainer

from .preferences import PreferencePair, is_preference_record

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                   "vocab.txt", "sentence_bert_config.json")


# ------------------------------------------------------------------ the model and its tokenizer
class RewardModel:
    """A sequence classifier with its own tokenizer: text in, logits out.

    model: a SequenceClassifier; tokenizer: its tokenizer (texts are encoded with it, right-padded,
    cut to max_length tokens keeping the start; default: the tokenizer's limit, at most 512, within
    the model's context window); id2label: {index: name}.
    """

    def __init__(self, model, tokenizer, id2label: dict[int, str] | None = None, max_length: int | None = None,
                 batch_size: int = 32):
        if tokenizer is None:
            raise UserError("a reward model needs its own tokenizer (it reads text)")
        self.model, self.tokenizer = model, tokenizer
        self.id2label = dict(id2label or getattr(model, "id2label", None) or
                             {i: f"LABEL_{i}" for i in range(model.num_labels)})
        config = model.config
        limit = None if config.position == "relative" else config.max_position_embeddings
        default = min(x for x in (tokenizer.model_max_length, 512) if x)
        self.max_length = min(x for x in (max_length or default, limit) if x)
        self.batch_size = batch_size

    @property
    def num_labels(self) -> int:
        return self.model.num_labels

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def label_index(self, label: int | str | None) -> int:
        """The column of a label given by index or name; None means the only one of a one-label model."""
        if label is None:
            if self.num_labels != 1:
                raise UserError(f"the reward model has {self.num_labels} labels ({', '.join(self.labels)}): "
                                "say which one is the reward")
            return 0
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.labels:
                raise UserError(f"unknown label {label!r}; the reward model's labels: {', '.join(self.labels)}")
            return self.labels.index(label)
        index = int(label)
        if not 0 <= index < self.num_labels:
            raise UserError(f"label index {index} is out of range for a model with {self.num_labels} labels")
        return index

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [t if t else " " for t in texts]  # an empty text has no token to pool
        return self.tokenizer(list(texts), padding=True, padding_side="right", truncation=True,
                              max_length=self.max_length)

    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """Logits (N, num_labels), fp32 on the CPU, of N texts (scored in batches of batch_size)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = self.encode(texts[start:start + self.batch_size])
                logits = self.model(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).logits
                out.append(logits.float().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.num_labels)

    @torch.no_grad()
    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer) -> torch.Tensor:
        """Logits of token ids made by `tokenizer`, which must have this model's vocabulary; ids of another
        vocabulary are refused (decode them with their tokenizer and call `score(texts)`)."""
        if not same_vocabulary(tokenizer, self.tokenizer):
            raise UserError("the policy's tokenizer and the reward model's differ "
                            f"({len(tokenizer):,} vs {len(self.tokenizer):,} ids, or other tokens): the reward model "
                            "needs text. Decode the policy's ids with the policy's tokenizer and call score(texts); "
                            "token ids never cross vocabularies")
        logits = self.model(input_ids.to(self.device), attention_mask.to(self.device)).logits
        return logits.float().cpu()

    def save(self, directory: str | Path) -> Path:
        """The classification folder (gencycle.checkpoints.classification) with the tokenizer files."""
        from gencycle.checkpoints.classification import save_classifier
        directory = save_classifier(self.model, directory, self.id2label, pad_token_id=self.tokenizer.pad_token_id)
        self.tokenizer.save_pretrained(directory)
        return directory


def same_vocabulary(a, b) -> bool:
    """True when two tokenizers map every token to the same id (one object, or equal vocabularies)."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    vocab = getattr(getattr(a, "backend", None), "get_vocab", None)
    other = getattr(getattr(b, "backend", None), "get_vocab", None)
    if vocab is None or other is None:
        return False
    return vocab(with_added_tokens=True) == other(with_added_tokens=True)


def load_reward_model(path: str | Path, device=None, dtype=None, max_length: int | None = None,
                      batch_size: int = 32) -> RewardModel:
    """A sequence-classification folder (gencycle's or transformers') with its tokenizer, as a RewardModel.

    A folder without a classification head, or without tokenizer files, is refused with a clear message.
    """
    from gencycle.checkpoints.classification import load_classifier
    from gencycle.tokenizer import load_tokenizer
    model = load_classifier(path, dtype=dtype, device=device)
    folder = Path(model.source)
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise UserError(f"{str(folder)!r} has a classifier but no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}): "
                        "a reward model reads text, so its folder needs its tokenizer")
    return RewardModel(model, load_tokenizer(folder), model.id2label, max_length, batch_size)


def load_for_scoring(path: str | Path, device=None):
    """(classifier, tokenizer, label names) of a reward model folder: what a reward function needs."""
    reward_model = load_reward_model(path, device=device)
    return reward_model.model, reward_model.tokenizer, reward_model.labels


# ------------------------------------------------------------------ data
class RewardDataError(UserError):
    """Reward-model data is empty, or a row lacks a field or has an unknown label."""


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int


def reward_data_kind(records: Sequence[dict], source: str = "data") -> str:
    """'classification' (text, label) or 'preference' (prompt, chosen, rejected), from the first row."""
    if not records:
        raise RewardDataError(f"{source}: the dataset is empty (no rows)")
    first = records[0]
    if isinstance(first, PreferencePair) or (isinstance(first, dict) and is_preference_record(first)):
        return "preference"
    if isinstance(first, (LabelledText,)) or (isinstance(first, dict) and ("text" in first or "label" in first)):
        return "classification"
    fields = sorted(first) if isinstance(first, dict) else type(first).__name__
    raise RewardDataError(f"{source}: row 1 has fields {fields}; a reward model trains on text/label rows "
                              "(classification) or prompt/chosen/rejected rows (preference pairs)")


def label_names(records: Sequence[dict], names: Sequence[str] | None = None, source: str = "data") -> dict[int, str]:
    """{index: name} of a labelled dataset: `names` in index order when given; else integer labels
    0..K-1 (named LABEL_i), or the sorted distinct string labels."""
    if names:
        return dict(enumerate(map(str, names)))
    for number, row in enumerate(records, start=1):  # a list, NaN, true ... is no label (issue 12)
        label = row.get("label") if isinstance(row, dict) else row.label
        if label is not None and not (_is_int(label) or (isinstance(label, str) and label.strip())):
            raise RewardDataError(f"{source}: row {number}: the label {label!r} is neither an integer index nor a name")
    values = {r.get("label") if isinstance(r, dict) else r.label for r in records}
    values.discard(None)
    if values and all(_is_int(v) for v in values):
        top = max(int(v) for v in values)
        return {i: f"LABEL_{i}" for i in range(max(top + 1, 2))}
    return dict(enumerate(sorted(str(v) for v in values)))


def to_labelled_texts(records: Sequence[dict], id2label: dict[int, str], source: str = "data") -> list[LabelledText]:
    """Rows {text, label} -> LabelledText; a label is an index or a name of id2label. Errors name the row."""
    if not records:
        raise RewardDataError(f"{source}: the dataset is empty (no rows)")
    by_name = {name: i for i, name in id2label.items()}
    out = []
    for number, row in enumerate(records, start=1):
        if isinstance(row, LabelledText):
            row = {"text": row.text, "label": row.label}
        missing = [f for f in ("text", "label") if row.get(f) in (None, "")]
        if missing:
            raise RewardDataError(f"{source}: row {number} has no {', '.join(map(repr, missing))} field "
                                      f"(a labelled row needs text and label); its fields: {sorted(row)}")
        text, label = str(row["text"]), row["label"]
        if not text.strip():
            raise RewardDataError(f"{source}: row {number} has an empty 'text'")
        if _is_int(label) and int(label) in id2label:
            index = int(label)
        elif str(label) in by_name:
            index = by_name[str(label)]
        else:
            raise RewardDataError(f"{source}: row {number}: unknown label {label!r}; the labels are "
                                      + ", ".join(f"{i} ({n})" for i, n in id2label.items()))
        out.append(LabelledText(text, index))
    if len({e.label for e in out}) < 2 and len(out) > 1:
        raise RewardDataError(f"{source}: every row has the label {id2label[out[0].label]!r}; a classifier "
                                  "needs examples of at least two labels")
    return out


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def load_reward_records(data: str | Path | Sequence[dict], split: str | None = None) -> tuple[list, str]:
    """(records, source) of a .jsonl / .csv file, a folder of split files (train / validation / test),
    the named set "chitchat-toxicity" (gencycle.data.toxicity), or a list of records."""
    if isinstance(data, (str, Path)):
        if str(data) == "chitchat-toxicity":
            from gencycle.data.toxicity import toxicity_records
            return toxicity_records(split or "train"), f"chitchat-toxicity ({split or 'train'})"
        path = Path(data).expanduser()
        if path.is_dir():
            from gencycle.data.dialogsum import split_file
            path = split_file(path, split or "train")
        if not path.is_file():
            raise FileNotFoundError(f"no reward data at {str(path)!r}")
        from gencycle.data.files import read_rows
        return read_rows(path, RewardDataError), str(path)
    return list(data), "data"


# ------------------------------------------------------------------ batches and objectives
class RewardCollator:
    """Tokenized rows -> a right-padded batch.

    classification: input_ids, attention_mask (B, T), labels (B,).
    preference: input_ids, attention_mask (2B, T), the B chosen texts first, then the B rejected
    ones (one forward for both), margin (B,) (0 where a row has none).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        return ids, mask

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "chosen_ids" in examples[0]:
            ids, mask = self._pad([e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples])
            margin = torch.tensor([e.get("margin") or 0.0 for e in examples], dtype=torch.float32)
            return {"input_ids": ids, "attention_mask": mask, "margin": margin}
        ids, mask = self._pad([e["input_ids"] for e in examples])
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long)}


def tokenize_labelled(texts: Sequence[LabelledText], tokenizer, max_length: int) -> list[dict]:
    encoded = tokenizer([t.text for t in texts], padding=False, truncation=True, max_length=max_length,
                        return_tensors=None)["input_ids"]
    return [{"input_ids": ids, "label": t.label} for ids, t in zip(encoded, texts)]


def tokenize_preferences_for_reward(pairs: Sequence[PreferencePair], tokenizer, max_length: int) -> list[dict]:
    """Each side is the prompt followed by its completion as one text (put any separator in the data)."""
    chosen = tokenizer([p.prompt + p.chosen for p in pairs], padding=False, truncation=True, max_length=max_length,
                       return_tensors=None)["input_ids"]
    rejected = tokenizer([p.prompt + p.rejected for p in pairs], padding=False, truncation=True,
                         max_length=max_length, return_tensors=None)["input_ids"]
    return [{"chosen_ids": c, "rejected_ids": r, "margin": p.margin} for c, r, p in zip(chosen, rejected, pairs)]


class RewardStep:
    """The step function of reward-model training: (model, batch) -> loss, with its figures kept in `stats`.

    A classification batch gives cross-entropy and `accuracy`; a preference batch the Bradley-Terry
    loss with `accuracy` (share of pairs with r_chosen > r_rejected), `margin` (mean r_chosen -
    r_rejected), `reward/chosen`, `reward/rejected`.
    """

    def __init__(self, center_rewards: float = 0.0):
        if not (isinstance(center_rewards, (int, float)) and math.isfinite(center_rewards) and center_rewards >= 0):
            raise UserError(f"center_rewards must be a number >= 0, got {center_rewards!r}")
        self.center_rewards = float(center_rewards)
        self.stats: list[tuple[int, dict[str, float]]] = []

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"]).logits.float()
        if "labels" in batch:
            loss, stats = classification_loss(logits, batch["labels"])
        else:
            loss, stats = bradley_terry_loss(logits, batch["margin"], self.center_rewards)
        self.stats.append((len(batch["input_ids"]), stats))
        return loss


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of logits (B, K) against labels (B,); stats: accuracy."""
    loss = F.cross_entropy(logits, labels)
    return loss, {"accuracy": (logits.argmax(-1) == labels).float().mean().item()}


def bradley_terry_loss(logits: torch.Tensor, margin: torch.Tensor | None = None,
                       center_rewards: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The pairwise loss of rewards (2B, 1): rows [:B] chosen, [B:] rejected; margin (B,) or None.

    -log sigmoid(r_c - r_r - margin), averaged, + center_rewards * mean((r_c + r_r)^2).
    """
    if logits.shape[-1] != 1:
        raise UserError(f"preference pairs train a one-label (scalar) reward model; this one has "
                        f"{logits.shape[-1]} labels (use num_labels=1)")
    rewards = logits[:, 0]
    chosen, rejected = rewards.chunk(2)
    gap = chosen - rejected
    loss = -F.logsigmoid(gap - (margin if margin is not None else 0)).mean()
    if center_rewards:
        loss = loss + center_rewards * (chosen + rejected).square().mean()
    with torch.no_grad():
        stats = {"accuracy": (gap > 0).float().mean().item(), "margin": gap.mean().item(),
                 "reward/chosen": chosen.mean().item(), "reward/rejected": rejected.mean().item()}
    return loss, stats


def rows_in(batch: dict) -> int:
    """The weight of a reward / DPO batch in the mean: its examples (pairs count once)."""
    return len(batch["labels"]) if "labels" in batch else len(batch["input_ids"]) // 2


class MetricsTrainer(Trainer):
    """The training loop, with the step function's own figures in each step's record (metrics.jsonl).

    step_fn keeps `stats`, a list of (weight, {name: value}) per micro-batch; after each optimizer
    step their weighted means join the step's record (loss, lr, ...). Figures are this process's.
    """

    def train_step(self) -> dict:
        self.step_fn.stats.clear()
        record = super().train_step()
        record.update(mean_stats(self.step_fn.stats))
        self.step_fn.stats.clear()
        return record

    def evaluate_stats(self, data) -> dict[str, float]:
        """The step function's figures (and the loss) over `data`, without training: {name: mean}."""
        self.step_fn.stats.clear()
        loss = self.evaluate(data)
        out = {"loss": loss, **mean_stats(self.step_fn.stats)}
        self.step_fn.stats.clear()
        return out


def mean_stats(stats: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    total = sum(weight for weight, _ in stats)
    if not total:
        return {}
    names = stats[0][1].keys()
    return {name: sum(weight * values[name] for weight, values in stats) / total for name in names}
