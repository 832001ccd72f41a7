"""`dpo(model, data, DpoConfig(...))`: direct preference optimization, LoRA or full.

    pairs: prompt/chosen/rejected rows (a file, a folder of splits, a list), or made from the policy's
           own samples: --reward names a scorer and --data holds prompts (best vs worst of n per prompt)
        tokenize (prompt + each completion + EOS); LoRA adapters (the default) or every weight trainable
        reference log-probs: precomputed once (no reference model held) or live every step
           (LoRA: the policy with its adapters off; full: a frozen copy)
        before: eval loss (ln 2) and rewards; Trainer(...).train() with rewards/* in metrics.jsonl
        after: eval loss, rewards/accuracies, rewards/margins; out/adapter (PEFT) or out/model (HF)

`gencycle dpo` is generated from `DpoConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import torch

from gencycle.alignment.dpo import (
    DPOCollator, DPOStep, precompute_reference, reference_copy, tokenize_preference_pairs,
)
from gencycle.alignment.preferences import (
    PreferencePair, load_preferences, load_prompts, sample_preference_pairs, write_preferences,
)
from gencycle.alignment.reward_model import MetricsTrainer, rows_in
from gencycle.errors import OptionError, UserError
from gencycle.training.data import collator_for
from gencycle.training.loop import TrainConfig, seed_everything
from gencycle.training.report import ParameterCount

from . import steps
from .config import RunConfig, override
from .finetune import LoraConfig

Method = Literal["full", "lora"]
ReferenceMode = Literal["precompute", "live"]
LossType = Literal["sigmoid", "ipo"]
RewardOn = Literal["completion", "prompt+completion"]
DEFAULT_LR = {"full": 1e-6, "lora": 5e-5}


def _positive(name: str, value, integer: bool = False, minimum: float = 0, strict: bool = True) -> None:
    kinds = int if integer else (int, float)
    ok = (not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
          and (value > minimum if strict else value >= minimum))
    if not ok:
        raise OptionError(name, f"must be {'an integer' if integer else 'a number'} {'>' if strict else '>='} "
                          f"{minimum}", value)


@dataclass
class DpoLossConfig:
    """The DPO objective and its reference."""

    beta: float = 0.1
    """strength of the pull to the reference: rewards are beta x (policy - reference) log-probs"""
    loss_type: LossType = "sigmoid"
    """sigmoid (DPO) or ipo (Azar et al.: a squared loss on per-token log-ratios)"""
    label_smoothing: float = 0.0
    """sigmoid: the chance a pair's label is flipped, in [0, 0.5) (conservative DPO; 0: plain DPO)"""
    reference: ReferenceMode = "precompute"
    """reference log-probs: precompute (once, before training: no reference model held) or live (every step:
    the policy with its adapters off under LoRA, a frozen copy under full training)"""

    def __post_init__(self):
        _positive("beta", self.beta)
        _positive("label_smoothing", self.label_smoothing, strict=False)
        if self.label_smoothing >= 0.5:
            raise OptionError("label_smoothing", "must be in [0, 0.5)", self.label_smoothing)
        for name, kinds in (("loss_type", LossType), ("reference", ReferenceMode)):
            if getattr(self, name) not in get_args(kinds):
                raise OptionError(name, f"must be one of {', '.join(get_args(kinds))}", getattr(self, name))


@dataclass
class DpoDataConfig:
    """Preference data: splits, chat template, lengths."""

    eval_data: str | Path | Sequence[dict] | None = None
    """pairs for the eval loss and rewards (default: the validation split of a --data folder)"""
    chat_template: bool = False
    """send each prompt as a user turn through the model's chat template (instruct models)"""
    max_length: int = 512
    """tokens per prompt + completion at most (cut to the context window); a long prompt loses its start"""

    def __post_init__(self):
        _positive("max_length", self.max_length, integer=True, minimum=1)


@dataclass
class PairSamplingConfig:
    """Pairs made from the policy's own samples: with --reward, --data holds prompts."""

    reward: str | None = None
    """what scores the samples: a reward model folder, profanity (alt-profanity-check), module:function or
    file.py:function; each prompt's best and worst samples become (chosen, rejected)"""
    reward_label: str | None = None
    """the reward model's label (name or index) whose logit is the reward (default: its only one)"""
    reward_on: RewardOn = "completion"
    """what the reward reads: the completion, or the prompt followed by it"""
    samples_per_prompt: int = 4
    """completions sampled per prompt (n of best-of-n vs worst-of-n)"""
    sample_max_new_tokens: int = 48
    """tokens sampled per completion at most"""
    sample_temperature: float = 1.0
    """sampling temperature"""
    sample_top_p: float = 1.0
    """nucleus sampling: keep the smallest set of tokens whose probability reaches this, (0, 1]"""
    sample_top_k: int = 0
    """sample among the k most likely tokens (0: all)"""

    def __post_init__(self):
        _positive("samples_per_prompt", self.samples_per_prompt, integer=True, minimum=2, strict=False)
        _positive("sample_max_new_tokens", self.sample_max_new_tokens, integer=True, minimum=0)
        _positive("sample_temperature", self.sample_temperature)
        _positive("sample_top_k", self.sample_top_k, integer=True, strict=False)
        if not (isinstance(self.sample_top_p, (int, float)) and 0 < self.sample_top_p <= 1):
            raise OptionError("sample_top_p", "must be in (0, 1]", self.sample_top_p)
        if self.reward_on not in get_args(RewardOn):
            raise OptionError("reward_on", f"must be one of {', '.join(get_args(RewardOn))}", self.reward_on)


@dataclass
class DpoConfig:
    """How to run DPO: the method, and the configs of each part of the run."""

    method: Method = "lora"
    """what to train: LoRA adapters (the reference is the adapters off) or every weight"""
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/dpo"))
    dpo: DpoLossConfig = field(default_factory=DpoLossConfig)
    data: DpoDataConfig = field(default_factory=DpoDataConfig)
    sampling: PairSamplingConfig = field(default_factory=PairSamplingConfig)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(lora_dropout=0.0))
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "set_by_workflow": ("out_dir", "save_trainable_only", "extra"),
        "help": {"lr": "peak learning rate (default by method: full 1e-6, lora 5e-5)"}})

    def __post_init__(self):
        if self.method not in get_args(Method):
            raise OptionError("method", f"must be one of {', '.join(get_args(Method))}", self.method)
        if self.train.strategy == "fsdp":
            raise OptionError("strategy", "fsdp is not supported for DPO yet; use ddp or none", self.train.strategy)

    def train_config(self) -> TrainConfig:
        lr = self.train.lr if self.train.lr is not None else DEFAULT_LR[self.method]
        out = str(self.run.out) if self.run.out is not None else None
        return dataclasses.replace(self.train, lr=lr, out_dir=out, save_trainable_only=True)


@dataclass
class DpoResult:
    method: str
    out_dir: Path | None
    pairs: int
    parameters: ParameterCount
    train_seconds: float
    peak_memory_bytes: int
    memory_kind: str
    history: list[dict]
    eval_before: dict | None = None    # loss, rewards/* on the eval pairs
    eval_after: dict | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def first_loss(self) -> float | None:
        return self.history[0]["loss"] if self.history else None

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in {"model", "history", "parameters", "out_dir"}}
        out.update(out_dir=str(self.out_dir) if self.out_dir else None, trainable_parameters=self.parameters.trainable,
                   total_parameters=self.parameters.total, steps=len(self.history), first_loss=self.first_loss,
                   final_loss=self.history[-1]["loss"] if self.history else None)
        return out

    def summary(self) -> str:
        lines = [f"DPO ({self.method}) on {self.pairs} pairs", str(self.parameters),
                 f"time: {self.train_seconds:.1f} s, peak memory ({self.memory_kind}): "
                 f"{self.peak_memory_bytes / 2**20:,.0f} MiB"]
        if self.history:
            first, last = self.history[0], self.history[-1]
            lines.append(f"train: loss {first['loss']:.4f} -> {last['loss']:.4f}, rewards/margins "
                         f"{first['rewards/margins']:.4f} -> {last['rewards/margins']:.4f}, rewards/accuracies "
                         f"{first['rewards/accuracies']:.3f} -> {last['rewards/accuracies']:.3f}")
        if self.eval_before is not None:
            b, a = self.eval_before, self.eval_after
            lines.append(f"eval: loss {b['loss']:.4f} -> {a['loss']:.4f}, rewards/margins {b['rewards/margins']:.4f} "
                         f"-> {a['rewards/margins']:.4f}, rewards/accuracies {b['rewards/accuracies']:.3f} -> "
                         f"{a['rewards/accuracies']:.3f}")
        return "\n".join(lines)


def _reward(config: PairSamplingConfig, reward_fn: Callable | None, device):
    """reward(prompts, completions) -> list[float] from a callable, a reward model folder or another spec."""
    if reward_fn is not None:
        return reward_fn
    spec = config.reward
    on = config.reward_on
    if Path(spec).is_dir():
        from gencycle.alignment.reward_model import load_reward_model
        rm = load_reward_model(spec, device=device)
        index = rm.label_index(config.reward_label)

        def score(prompts, completions):
            texts = completions if on == "completion" else [p + c for p, c in zip(prompts, completions)]
            return rm.score(texts)[:, index].tolist()
        return score
    try:
        from gencycle.alignment.rewards import make_reward
    except ImportError:
        raise UserError(f"reward {spec!r}: give a reward model folder (other rewards need gencycle.alignment."
                        "rewards)") from None
    return make_reward(spec, label=config.reward_label, on=on, device=device)


def _pairs(data, split: str | None) -> list[PreferencePair]:
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        from gencycle.data.dialogsum import split_file
        return load_preferences(split_file(Path(data), split or "train"))
    return load_preferences(data)


def _chat(pairs: list[PreferencePair], tokenizer) -> list[PreferencePair]:
    return [dataclasses.replace(p, prompt=tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}],
                                                                        add_generation_prompt=True)) for p in pairs]


def dpo(model: str | Path | torch.nn.Module, data: str | Path | Sequence[dict], config: DpoConfig | None = None, *,
        tokenizer=None, reward_fn: Callable | None = None, **options) -> DpoResult:
    """Run DPO on `model` (a path / packaged name, or a Transformer with `tokenizer=`) over `data`:
    preference rows (a .jsonl / .csv file, a folder of train / validation splits, a list), or prompts
    when pairs are sampled (--reward, or `reward_fn(prompts, completions) -> list[float]`).
    `options` override config fields by name: dpo(model, data, method="full", beta=0.2, max_steps=10)."""
    config = override(config or DpoConfig(), **options)
    if config.sampling.reward is None and reward_fn is None:
        unused = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(PairSamplingConfig)
                  if getattr(config.sampling, f.name) != getattr(PairSamplingConfig(), f.name)]
        if unused:  # they were ignored without a word
            import warnings
            warnings.warn(f"{', '.join(unused)}: settings of pairs sampled with --reward; ignored without it "
                          "(--data holds the pairs)")
    train_config = config.train_config()
    seed_everything(train_config.seed)
    loaded = steps.load(model, tokenizer, config.run)
    model, tokenizer, dist = loaded.model, loaded.tokenizer, loaded.dist
    architecture = model.config.architecture
    if architecture == "encoder":
        raise UserError("DPO trains a model that generates: a decoder or an encoder-decoder, not an encoder-only one")
    out_dir = Path(config.run.out) if config.run.out is not None else None
    # the pairs: from the data, or from the policy's own samples
    sampling = config.sampling
    if sampling.reward is not None or reward_fn is not None:
        prompts = load_prompts(data)
        pairs = sample_preference_pairs(
            model, tokenizer, prompts, _reward(sampling, reward_fn, dist.device), sampling.samples_per_prompt,
            max_new_tokens=sampling.sample_max_new_tokens, temperature=sampling.sample_temperature,
            top_p=sampling.sample_top_p, top_k=sampling.sample_top_k, seed=train_config.seed,
            chat_template=config.data.chat_template, progress=train_config.progress)
        if out_dir is not None and dist.is_main:
            write_preferences(pairs, out_dir / "pairs.jsonl")
    else:
        pairs = _pairs(data, "train")
    eval_pairs = None
    if config.data.eval_data is not None:
        eval_pairs = load_preferences(config.data.eval_data)
    elif isinstance(data, (str, Path)) and Path(data).is_dir():
        try:
            eval_pairs = _pairs(data, "validation")
        except FileNotFoundError:
            eval_pairs = None
    special = not config.data.chat_template
    if config.data.chat_template:
        pairs, eval_pairs = _chat(pairs, tokenizer), _chat(eval_pairs, tokenizer) if eval_pairs else None
    length = config.data.max_length if model.config.position == "relative" else \
        min(config.data.max_length, model.config.max_position_embeddings)
    examples = tokenize_preference_pairs(pairs, tokenizer, architecture, length, special)
    eval_examples = tokenize_preference_pairs(eval_pairs, tokenizer, architecture, length, special) \
        if eval_pairs else None
    # the policy and its reference
    if config.method == "lora":
        from gencycle.adapters import apply_lora
        lora = config.lora
        apply_lora(model, rank=lora.lora_rank, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                   target_modules=lora.target)
        reference, reference_model = "adapters-off", None
    else:
        model.requires_grad_(True)
        live = config.dpo.reference == "live"
        reference, reference_model = ("model", reference_copy(model)) if live else ("precomputed", None)
    if config.dpo.reference == "precompute":
        reference = "precomputed"
    step = DPOStep(config.dpo.beta, config.dpo.label_smoothing, config.dpo.loss_type, reference, reference_model)
    base = collator_for(model.config, tokenizer)
    collate = DPOCollator(base.pad_token_id, base.decoder_start_token_id)
    trainer = MetricsTrainer(model, train_config, examples, eval_data=eval_examples, collate_fn=collate,
                             step_fn=step, weight_fn=rows_in, device=dist.device)
    if reference == "precomputed":  # before any resume: the weights now are the reference's
        precompute_reference(trainer, examples + (eval_examples or []))
    eval_before = trainer.evaluate_stats(eval_examples) if eval_examples else None
    trained = steps.train(trainer, resume=config.run.resume)
    eval_after = trainer.evaluate_stats(eval_examples) if eval_examples else None
    result = DpoResult(config.method, out_dir, len(pairs), trained.parameters, trained.seconds,
                       trained.peak_memory_bytes, trained.memory_kind, trained.history, eval_before, eval_after,
                       trainer.module)
    if out_dir is not None and dist.is_main:
        steps.save(trainer.module, tokenizer, out_dir, adapter=config.method == "lora", base_name=loaded.path)
        steps.write_report(out_dir, {**result.to_dict(),
                                     "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))})
    dist.barrier()
    return result
