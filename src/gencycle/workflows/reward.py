"""`train_reward_model(backbone, data, RewardConfig(...))`: a reward model from labelled text or preference pairs.

    backbone (any family) + a classification head (SequenceClassifier: last token, pooler, mean, cls)
    data: text/label rows  -> cross-entropy over the labels       (a toxic / non-toxic classifier)
          prompt/chosen/rejected rows -> Bradley-Terry on a scalar (a preference reward model)
        before: loss and accuracy on the eval and test splits
        Trainer(...).train()   every step's loss, accuracy (and margin for pairs) in metrics.jsonl
        after: the same figures; out/model = a Hugging Face sequence-classification folder + tokenizer

A T5 backbone contributes its encoder. A LoRA-trained head is merged into the weights before
saving, so the folder is always a plain classifier. `gencycle reward train` is generated from
`RewardConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence, get_args

import torch

from gencycle.alignment.preferences import to_preference_pairs
from gencycle.alignment.reward_model import (
    MetricsTrainer, RewardCollator, RewardDataError, RewardModel, RewardStep, label_names, load_reward_records,
    reward_data_kind, rows_in, to_labelled_texts, tokenize_labelled, tokenize_preferences_for_reward,
)
from gencycle.errors import OptionError
from gencycle.training.loop import TrainConfig, seed_everything
from gencycle.training.report import ParameterCount

from . import steps
from .config import RunConfig, override
from .finetune import LoraConfig

Method = Literal["full", "lora"]
Pooling = Literal["auto", "last", "mean", "cls", "pooler"]
DEFAULT_LR = {"full": 5e-5, "lora": 2e-4}


@dataclass
class RewardDataConfig:
    """Reward-model data: splits, labels, lengths."""

    eval_data: str | Path | Sequence[dict] | None = None
    """rows for the eval loss and accuracy (default: the validation split of a --data folder or named set)"""
    test_data: str | Path | Sequence[dict] | None = None
    """held-out rows whose accuracy is reported before / after (default: the test split)"""
    labels: tuple[str, ...] | None = None
    """label names in index order, e.g. non-toxic toxic (default: from the data; integer labels are LABEL_i;
    chitchat-toxicity's are non-toxic toxic)"""
    max_length: int = 256
    """tokens per text at most (cut to the backbone's context window); a long text loses its end"""

    def __post_init__(self):
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise OptionError("max_length", "must be an integer >= 2", self.max_length)
        if self.labels is not None:
            self.labels = tuple(self.labels)
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
                raise OptionError("labels", "must be two or more distinct names", self.labels)


@dataclass
class RewardHeadConfig:
    """The head on the backbone and the loss."""

    pooling: Pooling = "auto"
    """what the head reads: auto (BERT's pooler, a decoder's last token, T5's encoder mean), last, mean, cls, pooler"""
    center_rewards: float = 0.0
    """preference pairs: add this x mean((r_chosen + r_rejected)^2), keeping rewards centred on 0 (0.01 is usual)"""

    def __post_init__(self):
        if self.pooling not in get_args(Pooling):
            raise OptionError("pooling", f"must be one of {', '.join(get_args(Pooling))}", self.pooling)
        value = self.center_rewards
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise OptionError("center_rewards", "must be a number >= 0 (0: off)", value)


@dataclass
class RewardConfig:
    """How to train a reward model: the method, and the configs of each part of the run."""

    method: Method = "full"
    """what to train: every parameter, or LoRA adapters (plus the head), merged before saving"""
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/reward"))
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    head: RewardHeadConfig = field(default_factory=RewardHeadConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "set_by_workflow": ("out_dir", "save_trainable_only", "extra"),
        "help": {"lr": "peak learning rate (default by method: full 5e-5, lora 2e-4)"}})

    def __post_init__(self):
        if self.method not in get_args(Method):
            raise OptionError("method", f"must be one of {', '.join(get_args(Method))}", self.method)

    def train_config(self) -> TrainConfig:
        lr = self.train.lr if self.train.lr is not None else DEFAULT_LR[self.method]
        out = str(self.run.out) if self.run.out is not None else None
        return dataclasses.replace(self.train, lr=lr, out_dir=out, save_trainable_only=True)


@dataclass
class RewardResult:
    kind: str                          # "classification" or "preference"
    labels: list[str]
    out_dir: Path | None
    parameters: ParameterCount
    train_seconds: float
    peak_memory_bytes: int
    memory_kind: str
    history: list[dict]
    eval_before: dict | None = None     # loss, accuracy (and margin) on the eval split
    eval_after: dict | None = None
    test_before: dict | None = None     # the same on the held-out test split
    test_after: dict | None = None
    reward_model: RewardModel | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in {"reward_model", "history", "parameters", "out_dir"}}
        out.update(out_dir=str(self.out_dir) if self.out_dir else None, trainable_parameters=self.parameters.trainable,
                   total_parameters=self.parameters.total, steps=len(self.history),
                   final_loss=self.history[-1]["loss"] if self.history else None)
        return out

    def summary(self) -> str:
        lines = [f"reward model ({self.kind}): labels {', '.join(self.labels)}", str(self.parameters),
                 f"time: {self.train_seconds:.1f} s, peak memory ({self.memory_kind}): "
                 f"{self.peak_memory_bytes / 2**20:,.0f} MiB"]
        for name in ("eval", "test"):
            before, after = getattr(self, f"{name}_before"), getattr(self, f"{name}_after")
            if before is not None:
                lines.append(f"{name}: loss {before['loss']:.4f} -> {after['loss']:.4f}, accuracy "
                             f"{before['accuracy']:.4f} -> {after['accuracy']:.4f} ({after['rows']} rows)")
        return "\n".join(lines)


def _is_split_source(data) -> bool:
    return isinstance(data, (str, Path)) and (str(data) == "chitchat-toxicity" or Path(data).is_dir())


def _split(data, split: str):
    if not _is_split_source(data):
        return None
    try:
        return load_reward_records(data, split)[0]
    except FileNotFoundError:
        return None


def _examples(records, kind: str, id2label, tokenizer, max_length: int, source: str) -> list[dict]:
    if reward_data_kind(records, source) != kind:
        raise RewardDataError(f"{source}: its rows are not {kind} rows like the training data's")
    if kind == "preference":
        return tokenize_preferences_for_reward(to_preference_pairs(records, source), tokenizer, max_length)
    return tokenize_labelled(to_labelled_texts(records, id2label, source), tokenizer, max_length)


def _load_backbone(backbone, tokenizer, run: RunConfig):
    """(classifier or None, backbone module, tokenizer, dist): a reward model folder keeps its head."""
    from gencycle.checkpoints.classification import encoder_only, read_classification_config
    if isinstance(backbone, (str, Path)) and Path(backbone).is_dir():
        try:
            read_classification_config(backbone)
            is_classifier = True
        except ValueError:
            is_classifier = False
        if is_classifier:
            from gencycle.alignment.reward_model import load_reward_model
            from gencycle.training import distributed
            dist = distributed.setup(run.device)
            rm = load_reward_model(backbone, device=dist.device, dtype=run.dtype)
            return rm.model, rm.model.backbone, tokenizer or rm.tokenizer, dist
    loaded = steps.load(backbone, tokenizer, run)
    return None, encoder_only(loaded.model), loaded.tokenizer, loaded.dist


def train_reward_model(backbone: str | Path | torch.nn.Module, data: str | Path | Sequence[dict],
                       config: RewardConfig | None = None, *, tokenizer=None, **options) -> RewardResult:
    """Train a reward model on `backbone` (a model path / packaged name / reward model folder, or a
    Transformer with `tokenizer=`) over `data` (a .jsonl / .csv file, a folder of train / validation /
    test splits, "chitchat-toxicity", or a list of rows); `options` override config fields by name."""
    from gencycle.model.heads import SequenceClassifier
    config = override(config or RewardConfig(), **options)
    train_config = config.train_config()
    seed_everything(train_config.seed)
    classifier, backbone, tokenizer, dist = _load_backbone(backbone, tokenizer, config.run)
    # data: the first training row decides the kind; eval / test rows must be of the same kind
    split_source = _is_split_source(data)
    records, source = load_reward_records(data, "train" if split_source else None)
    kind = reward_data_kind(records, source)
    if kind == "classification":
        names = config.data.labels
        if names is None and str(data) == "chitchat-toxicity":
            from gencycle.data.toxicity import LABELS
            names = tuple(LABELS[i] for i in sorted(LABELS))
        id2label = (classifier.id2label if classifier is not None and not config.data.labels
                    else label_names(records, names, source))
        num_labels = len(id2label)
    else:
        id2label, num_labels = {0: "reward"}, 1
    limit = None if backbone.config.position == "relative" else backbone.config.max_position_embeddings
    length = min(config.data.max_length, limit or config.data.max_length)
    train_examples = _examples(records, kind, id2label, tokenizer, length, source)
    splits = {}
    for name, given, split in (("eval", config.data.eval_data, "validation"), ("test", config.data.test_data, "test")):
        rows = load_reward_records(given)[0] if given is not None else _split(data, split)
        splits[name] = _examples(rows, kind, id2label, tokenizer, length, f"{name} data") if rows else None
    # the model: a head on the backbone (or the folder's own), LoRA or every weight trainable
    if classifier is None:
        pooling = None if config.head.pooling == "auto" else config.head.pooling
        if pooling is None and backbone.config.family == "t5":
            pooling = "mean"
        if backbone.config.pad_token_id is None:
            backbone.config.pad_token_id = tokenizer.pad_token_id
        classifier = SequenceClassifier(backbone, num_labels, pooling).to(dist.device)
    elif classifier.num_labels != num_labels:
        raise RewardDataError(f"the reward model folder has {classifier.num_labels} labels, the data {num_labels}")
    classifier.id2label = id2label
    if config.method == "lora":
        from gencycle.adapters import apply_lora
        lora = config.lora
        apply_lora(classifier, rank=lora.lora_rank, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                   target_modules=lora.target)
        for name, param in classifier.named_parameters():  # the head is new: it trains in full
            if not name.startswith("backbone."):
                param.requires_grad_(True)
    else:
        classifier.requires_grad_(True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    step = RewardStep(config.head.center_rewards)
    trainer = MetricsTrainer(classifier, train_config, train_examples, eval_data=splits["eval"],
                             collate_fn=RewardCollator(pad), step_fn=step, weight_fn=rows_in, device=dist.device)

    def measure(name: str):
        if not splits[name]:
            return None
        return {**trainer.evaluate_stats(splits[name]), "rows": len(splits[name])}

    eval_before, test_before = measure("eval"), measure("test")
    trained = steps.train(trainer, resume=config.run.resume)
    eval_after, test_after = measure("eval"), measure("test")
    out_dir = Path(config.run.out) if config.run.out is not None else None
    if config.method == "lora":
        from gencycle.adapters import merge_lora
        merge_lora(classifier, unload=True)
    classifier.eval()
    reward_model = RewardModel(classifier, tokenizer, id2label, max_length=length)
    result = RewardResult(kind, reward_model.labels, out_dir, trained.parameters, trained.seconds,
                          trained.peak_memory_bytes, trained.memory_kind, trained.history,
                          eval_before, eval_after, test_before, test_after, reward_model)
    if out_dir is not None and dist.is_main:
        reward_model.save(out_dir / "model")
        if str(data) == "chitchat-toxicity":
            from gencycle.data.toxicity import data_card
            (out_dir / "DATA_CARD.md").write_text(data_card(), encoding="utf-8")
        steps.write_report(out_dir, {**result.to_dict(), "data": str(data) if isinstance(data, (str, Path)) else None,
                                     "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))})
    dist.barrier()
    return result
