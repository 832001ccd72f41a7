"""`rlhf(model, prompts, reward, RlhfConfig(...))`: PPO with a KL penalty against a frozen reference.

    model + prompts --tokenize (chat template or not)--> Prompt(text, ids)
    reward: "profanity" | a reward model folder | module:function | path.py:function | a callable
        method: lora (adapters; the reference = the model with them off) | full (a frozen copy is the reference)
        before: one sampled reply per held-out prompt (fixed seed) -> reward, judges (toxicity), KL, perplexity
        PPOTrainer(ValueHead(model), ...).train()     (metrics.jsonl, samples.jsonl, reward_kl.png, checkpoints)
        after: the same measurements, with bootstrap 95% intervals and the paired change
        saved: the adapter (PEFT folder) or the model, the value head, report.json, eval_samples.jsonl

`gencycle rlhf MODEL --prompts FILE --reward SPEC` is generated from `RlhfConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np
import torch

from gencycle.alignment.ppo import PPOConfig, PPOTrainer, Prompt, frozen_copy
from gencycle.alignment.rewards import RewardKind, RewardOn, make_judge, make_reward
from gencycle.errors import OptionError, UserError, check_input, check_output
from gencycle.training.loop import TrainConfig, seed_everything
from gencycle.training.report import MemoryMonitor, ParameterCount, count_parameters

from . import steps
from .config import RunConfig, override
from .finetune import LoraConfig

Method = Literal["lora", "full"]
METHODS = get_args(Method)
DEFAULT_LR = {"lora": 1e-4, "full": 1.41e-5}
ROLES = ("system", "user", "assistant")  # the roles of a prompt row's `messages`
DETOX = "detox"  # --prompts detox: the lab's prompts (gencycle.data.detox); its held-out split is detox:test


@dataclass
class PromptsConfig:
    """The prompts PPO continues, and the held-out ones that measure the policy."""

    prompt_field: str = "prompt"
    """field of each prompts-file row holding the prompt text"""
    chat_template: bool = False
    """send each prompt through the model's chat template (a row's `messages`, or its prompt as one user turn)"""
    eval_prompts: str | Path | Sequence | None = None
    """held-out prompts measured before / after (default: test.jsonl of a --prompts folder, detox:test for detox)"""

    def __post_init__(self):
        if not isinstance(self.prompt_field, str) or not self.prompt_field:
            raise OptionError("prompt_field", "must name a field", self.prompt_field)


@dataclass
class RewardSettings:
    """How a reward model (or a text classifier) gives the reward."""

    reward_label: str | None = None
    """the reward model's label whose output is the reward: an index or a name (needed with 2+ labels)"""
    reward_kind: RewardKind = "logit"
    """the label's raw logit (smoother for PPO), probability, or log-probability"""
    reward_on: RewardOn = "completion"
    """text a classifier reads: the completion alone, or prompt + completion (the course lab's)"""
    reward_batch_size: int = 16
    """texts per reward-model forward"""

    def __post_init__(self):
        if self.reward_kind not in get_args(RewardKind):
            raise OptionError("reward_kind", "", message=f"unknown reward_kind {self.reward_kind!r}; use one of "
                              f"{', '.join(get_args(RewardKind))}")
        if self.reward_on not in get_args(RewardOn):
            raise OptionError("reward_on", "", message=f"unknown reward_on {self.reward_on!r}; use one of "
                              f"{', '.join(get_args(RewardOn))}")
        if isinstance(self.reward_batch_size, bool) or not isinstance(self.reward_batch_size, int) \
                or self.reward_batch_size < 1:
            raise OptionError("reward_batch_size", "must be an integer >= 1", self.reward_batch_size)


@dataclass
class PolicyMeasureConfig:
    """What is measured on the held-out prompts before and after PPO."""

    eval_examples: int = 256
    """held-out prompts measured (one sampled reply each, fixed seed); 0 skips the measurement"""
    judges: tuple[str, ...] = ()
    """scorers of an unwanted property in [0, 1], e.g. toxicity: profanity (alt-profanity-check P(offensive)),
    a classifier folder (the probability of --judge-label), module:function"""
    judge_label: str | None = None
    """label of a classifier judge whose probability is read (e.g. toxic)"""
    threshold: float = 0.5
    """judges report the share of replies scoring above this"""
    eval_seed: int = 1234
    """seed of the held-out replies (the same before and after), >= 0"""
    bootstrap_samples: int = 2000
    """bootstrap resamples of the prompts for the 95% intervals"""
    measure_batch_size: int = 16
    """held-out prompts sampled at once"""

    def __post_init__(self):
        for name, minimum in (("eval_examples", 0), ("bootstrap_samples", 100), ("measure_batch_size", 1),
                              ("eval_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise OptionError(name, f"must be an integer >= {minimum}", value)
        if not 0 < self.threshold < 1:
            raise OptionError("threshold", "must be in (0, 1)", self.threshold)
        self.judges = (self.judges,) if isinstance(self.judges, str) else tuple(self.judges)


@dataclass
class RlhfConfig:
    """How to run PPO: the method, and the configs of each part of the run."""

    method: Method = "lora"
    """what to train: LoRA adapters (the reference is the model with them off), or every weight (a frozen copy)"""
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/rlhf"))
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    reward: RewardSettings = field(default_factory=RewardSettings)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(lora_dropout=0.0), metadata={
        "help": {"lora_dropout": "dropout on the adapter's input, in [0, 1) (PPO runs with dropout off: "
                                 "rollouts and updates in eval mode)"}})
    measure: PolicyMeasureConfig = field(default_factory=PolicyMeasureConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=100, batch_size=8, schedule="constant"), metadata={
            # from run.out; True; unused by PPO; PPO runs in one process
            "set_by_workflow": ("out_dir", "save_trainable_only", "extra", "grad_accum", "eval_every",
                                "eval_batch_size", "strategy"),
            "help": {"lr": "peak learning rate (default by method: lora 1e-4, full 1.41e-5)",
                     "batch_size": "prompts per PPO step (one rollout batch)",
                     "max_steps": "PPO steps (rollout + updates); overrides --epochs",
                     "epochs": "passes over the prompts when --max-steps is not given",
                     "seed": "random seed: prompt order, rollouts, mini-batch order, the value head"}})

    def __post_init__(self):
        if self.method not in METHODS:
            raise OptionError("method", "", message=f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.run.resume and self.run.out is None:
            raise OptionError("resume", "", message="resume needs the run folder (out) holding the checkpoints")

    def train_config(self) -> TrainConfig:
        lr = self.train.lr if self.train.lr is not None else DEFAULT_LR[self.method]
        out = str(self.run.out) if self.run.out is not None else None
        return dataclasses.replace(self.train, lr=lr, out_dir=out, save_trainable_only=self.method == "lora",
                                   strategy="none")

    def check_paths(self, prompts, reward) -> None:
        """Before any work: the prompt files exist and the run folder can be written."""
        for option, value in (("prompts", prompts), ("eval_prompts", self.prompts.eval_prompts)):
            if isinstance(value, (str, Path)) and not str(value).startswith(DETOX):
                check_input(value, option)
        if self.run.out is not None:
            check_output(self.run.out, "out")
        self.warn_unused(reward)

    def warn_unused(self, reward) -> None:
        """Warn about settings that the reward and the judges given do not read (they were ignored silently)."""
        import warnings

        def model_folder(spec) -> bool:
            return not isinstance(spec, (str, Path)) or Path(str(spec)).is_dir()
        settings, default = self.reward, RewardSettings()
        if not model_folder(reward):
            unused = [name for name in ("reward_label", "reward_kind")
                      if getattr(settings, name) != getattr(default, name)]
            if ":" in str(reward) and settings.reward_on != default.reward_on:
                unused.append("reward_on")  # a function gets prompts and completions apart
            if unused:
                flags = " and ".join("--" + name.replace("_", "-") for name in unused)
                warnings.warn(f"{flags} {'is' if len(unused) == 1 else 'are'} read by a reward model folder: "
                              f"ignored with --reward {reward}")
        if self.measure.judge_label is not None and not any(model_folder(j) for j in self.measure.judges):
            warnings.warn("--judge-label is read by a classifier folder among --judges: ignored "
                          + ("(no --judges)" if not self.measure.judges else f"with --judges {' '.join(map(str, self.measure.judges))}"))


# ------------------------------------------------------------------ prompts
def prompt_records(source, option: str = "prompts") -> tuple[list[dict], str]:
    """(rows, where they came from) of prompts: "detox" / "detox:train" / "detox:test", a .jsonl /
    .csv file, a folder's train.jsonl (test.jsonl for eval_prompts), or a list of strings / dicts."""
    if isinstance(source, (str, Path)):
        text = str(source)
        if text == DETOX or text.startswith(DETOX + ":"):
            from gencycle.data.detox import detox_prompts
            return detox_prompts(text.partition(":")[2] or "train"), text
        path = check_input(source, option)
        if path.is_dir():
            path = path / "train.jsonl" if option == "prompts" else path / "test.jsonl"
            check_input(path, option, "file")
        from gencycle.data.files import read_rows
        rows = read_rows(path, error=UserError)  # a bad line names its row
        if not rows:
            raise OptionError(option, "", message=f"{path}: no prompts (the file is empty)")
        return rows, str(path)
    rows = [{"prompt": r} if isinstance(r, str) else r for r in source]
    if not rows:
        raise OptionError(option, "", message=f"{option}: no prompts (the list is empty)")
    return rows, option


def tokenize_prompts(rows: list[dict], tokenizer, config: PromptsConfig, option: str = "prompts",
                     source: str | None = None) -> list[Prompt]:
    """Rows -> Prompt(text the reward reads, ids the policy continues); a bad row is named, with its source."""
    prompts, source = [], source or option
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise OptionError(option, "", message=f"{source}: row {number} is a {type(row).__name__}, not a record")
        text = row.get(config.prompt_field)
        messages = row.get("messages") if config.chat_template else None
        if messages is None and (not isinstance(text, str) or not text.strip()):
            fields = ", ".join(sorted(map(str, row))) or "none"
            what = "has no" if text is None else "has an empty" if isinstance(text, str) else "has a non-text"
            raise OptionError(option, "", message=f"{source}: row {number} {what} {config.prompt_field!r} field "
                              f"(its fields: {fields}); name the prompt's field with --prompt-field")
        if config.chat_template:
            messages = messages or [{"role": "user", "content": text}]
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                    for m in messages):
                raise OptionError(option, "", message=f"{source}: row {number}'s 'messages' must be a list of "
                                  f"{{\"role\": {' | '.join(ROLES)}, \"content\": text}} objects, got "
                                  f"{str(messages)[:120]}")
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            text = text if isinstance(text, str) and text.strip() else messages[-1]["content"]
        else:
            ids = tokenizer.encode(text)
        if not ids:
            raise OptionError(option, "", message=f"{source}: row {number}'s prompt has no token")
        prompts.append(Prompt(text, list(ids)))
    return prompts


def default_eval_prompts(prompts):
    if isinstance(prompts, (str, Path)):
        if str(prompts) in (DETOX, DETOX + ":train"):
            return DETOX + ":test"
        if Path(prompts).is_dir() and (Path(prompts) / "test.jsonl").is_file():
            return Path(prompts) / "test.jsonl"
    return None


# ------------------------------------------------------------------ measurement
def bootstrap_interval(values, statistic=np.mean, samples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(resamples, axis=1)` over resamples of `values`
    (1-D, or the rows of a 2-D array: a ratio of two sums resamples its rows together)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    index = np.random.default_rng(seed).integers(0, len(values), size=(samples, len(values)))
    stats = statistic(values[index], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def describe(values, samples: int, seed: int, threshold: float | None = None) -> dict:
    """mean (and share above threshold) with bootstrap 95% intervals."""
    values = np.asarray(values, dtype=np.float64)
    out = {"n": int(len(values)), "mean": float(values.mean()) if len(values) else math.nan,
           "mean_ci": bootstrap_interval(values, np.mean, samples, seed)}
    if threshold is not None:
        above = (values > threshold).astype(np.float64)
        out.update(share_above=float(above.mean()) if len(values) else math.nan,
                   share_ci=bootstrap_interval(above, np.mean, samples, seed + 1))
    return out


def paired_change(before, after, samples: int, seed: int, threshold: float | None = None) -> dict:
    """after - before on the same prompts: the mean change (and change of the share above threshold),
    with paired bootstrap 95% intervals (the prompts are resampled, each keeps its two replies)."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    out = {"mean": float((after - before).mean()), "mean_ci": bootstrap_interval(after - before, np.mean, samples,
                                                                                    seed + 2)}
    if threshold is not None:
        diff = (after > threshold).astype(np.float64) - (before > threshold).astype(np.float64)
        out.update(share=float(diff.mean()), share_ci=bootstrap_interval(diff, np.mean, samples, seed + 3))
    return out


def measure_policy(trainer: PPOTrainer, prompts: list[Prompt], judges: list, config: PolicyMeasureConfig,
                   when: str) -> dict:
    """Sample one reply per held-out prompt and score it: reward, judges, KL and reference perplexity."""
    raw = trainer.measure(prompts, config.eval_seed, config.measure_batch_size, desc=f"held-out replies {when}")
    texts = [p.text for p in prompts]
    scores = {getattr(j, "name", str(j)): j(texts, raw["completions"]) for j in judges}
    tokens = sum(raw["tokens"])
    return {"completions": raw["completions"], "rewards": raw["rewards"], "kl": raw["kl"], "judges": scores,
            "perplexity": math.exp(-sum(raw["ref_logprob"]) / max(tokens, 1)), "ref_logprob": raw["ref_logprob"],
            "tokens": raw["tokens"]}


def compare(before: dict, after: dict, config: PolicyMeasureConfig) -> dict:
    """The before / after table: each judge (mean, share above threshold), the reward, KL, perplexity."""
    n, seed, threshold = config.bootstrap_samples, config.eval_seed, config.threshold
    table = {"judges": {}}
    for name in before["judges"]:
        b, a = before["judges"][name], after["judges"][name]
        table["judges"][name] = {"before": describe(b, n, seed, threshold), "after": describe(a, n, seed, threshold),
                                 "change": paired_change(b, a, n, seed, threshold)}
    table["reward"] = {"before": describe(before["rewards"], n, seed), "after": describe(after["rewards"], n, seed),
                       "change": paired_change(before["rewards"], after["rewards"], n, seed)}
    table["kl"] = {"before": describe(before["kl"], n, seed), "after": describe(after["kl"], n, seed)}

    def ppl(side):  # perplexity of the replies under the reference; the prompts resampled
        rows = np.stack([np.asarray(side["ref_logprob"]), np.asarray(side["tokens"], dtype=np.float64)], 1)
        stat = lambda r, axis: np.exp(-r[..., 0].sum(axis) / r[..., 1].sum(axis))  # noqa: E731
        return {"value": side["perplexity"], "ci": bootstrap_interval(rows, stat, n, seed + 4)}
    table["perplexity"] = {"before": ppl(before), "after": ppl(after)}
    return table


def _interval(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def table_rows(table: dict, threshold: float) -> list[tuple[str, str, str, str]]:
    """(measure, before, after, change) strings, each value with its 95% interval."""
    rows = []
    for name, t in table["judges"].items():
        b, a, c = t["before"], t["after"], t["change"]
        rows.append((f"{name}: mean", f"{b['mean']:.4f} {_interval(b['mean_ci'])}",
                     f"{a['mean']:.4f} {_interval(a['mean_ci'])}", f"{c['mean']:+.4f} {_interval(c['mean_ci'])}"))
        rows.append((f"{name}: share > {threshold:g}", f"{b['share_above']:.3f} {_interval(b['share_ci'])}",
                     f"{a['share_above']:.3f} {_interval(a['share_ci'])}",
                     f"{c['share']:+.3f} {_interval(c['share_ci'])}"))
    r = table["reward"]
    rows.append(("reward: mean", f"{r['before']['mean']:.4f} {_interval(r['before']['mean_ci'])}",
                 f"{r['after']['mean']:.4f} {_interval(r['after']['mean_ci'])}",
                 f"{r['change']['mean']:+.4f} {_interval(r['change']['mean_ci'])}"))
    k = table["kl"]
    rows.append(("KL to the reference (nats per reply)", f"{k['before']['mean']:.3f} {_interval(k['before']['mean_ci'])}",
                 f"{k['after']['mean']:.3f} {_interval(k['after']['mean_ci'])}", ""))
    p = table["perplexity"]
    rows.append(("perplexity of the replies under the reference", f"{p['before']['value']:.2f} "
                 f"{_interval(p['before']['ci'])}", f"{p['after']['value']:.2f} {_interval(p['after']['ci'])}", ""))
    return rows


def markdown_table(table: dict, threshold: float) -> str:
    lines = ["| measure | before | after | change (paired) |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in table_rows(table, threshold)]
    return "\n".join(lines)


# ------------------------------------------------------------------ the result
@dataclass
class RlhfResult:
    method: str
    out_dir: Path | None
    parameters: ParameterCount
    train_seconds: float
    peak_memory_bytes: int
    memory_kind: str                          # "rss" (CPU) or "cuda_max_allocated"
    history: list[dict]
    reward_name: str = ""
    eval_prompts: int = 0
    table: dict | None = None                 # before / after with intervals (see `compare`)
    threshold: float = 0.5
    warnings: list[str] = field(default_factory=list)   # the diagnostics that fired
    samples: list[dict] = field(default_factory=list)   # held-out prompts: prompt, before, after, scores
    model: torch.nn.Module | None = field(default=None, repr=False)  # the policy: ValueHead(LM)
    restored_steps: int = 0                   # steps restored from a checkpoint (not timed by train_seconds)

    def to_dict(self) -> dict:
        skip = {"model", "history", "parameters", "out_dir", "samples"}
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        last = self.history[-1] if self.history else {}
        out.update(out_dir=str(self.out_dir) if self.out_dir else None, trainable_parameters=self.parameters.trainable,
                   total_parameters=self.parameters.total, trainable_percent=self.parameters.percent,
                   steps=len(self.history), final={k: last.get(k) for k in ("reward/mean", "kl/mean", "kl/coef",
                                                                             "objective/rlhf_reward")})
        return out

    def summary(self) -> str:
        lines = [f"method: {self.method}, reward: {self.reward_name}", str(self.parameters),
                 f"time: {self.train_seconds:.1f} s for {len(self.history) - self.restored_steps} PPO steps"
                 + (f" (steps {self.restored_steps + 1}-{len(self.history)}; 1-{self.restored_steps} restored from "
                    f"a checkpoint)" if self.restored_steps else "")
                 + f", peak memory ({self.memory_kind}): {self.peak_memory_bytes / 2**20:,.0f} MiB"]
        if self.history:
            first, last = self.history[0], self.history[-1]
            lines.append(f"reward/mean {first['reward/mean']:.4f} -> {last['reward/mean']:.4f}, kl/mean "
                         f"{first['kl/mean']:.3f} -> {last['kl/mean']:.3f}, kl/coef {last['kl/coef']:.4f}")
        if self.warnings:
            lines.append(f"diagnostics that fired: {', '.join(self.warnings)} (see the warnings above)")
        if self.table:
            lines.append(f"held-out prompts: {self.eval_prompts} (one sampled reply each, 95% bootstrap intervals)")
            rows = [("measure", "before", "after", "change (paired)")] + table_rows(self.table, self.threshold)
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


# ------------------------------------------------------------------ the workflow
def rlhf(model: str | Path | torch.nn.Module, prompts, reward, config: RlhfConfig | None = None, *,
         tokenizer=None, reward_tokenizer=None, **options) -> RlhfResult:
    """PPO on `model` (a path / packaged name, or a Transformer with `tokenizer=`) over `prompts`
    (see `prompt_records`) for `reward` (see `gencycle.alignment.rewards.make_reward`; a reward model
    object needs `reward_tokenizer=`), as `config` says; `options` override its fields by name:
    rlhf(model, "detox", "runs/rm", reward_label="nontoxic", max_steps=100, out="runs/detox")."""
    config = override(config or RlhfConfig(), **options)
    config.check_paths(prompts, reward)
    train_config = config.train_config()
    seed_everything(train_config.seed)
    # the reward and the judges first: a bad one is found before the model loads
    from gencycle.training import distributed
    device, settings = distributed.setup(config.run.device).device, config.reward
    reward_fn = make_reward(reward, tokenizer=reward_tokenizer, label=settings.reward_label,
                            kind=settings.reward_kind, on=settings.reward_on, batch_size=settings.reward_batch_size,
                            device=device)
    judges = [make_judge(spec, label=config.measure.judge_label, on=settings.reward_on,
                         batch_size=settings.reward_batch_size, device=device) for spec in config.measure.judges]
    loaded = steps.load(model, tokenizer, config.run)
    lm, tokenizer, dist = loaded.model, loaded.tokenizer, loaded.dist
    if not lm.config.has_decoder:
        raise OptionError("model", "", message="PPO needs a model that generates text (decoder-only or "
                          "encoder-decoder), not an encoder-only one")
    rows, source = prompt_records(prompts)
    train_prompts = tokenize_prompts(rows, tokenizer, config.prompts, source=source)
    eval_source = config.prompts.eval_prompts if config.prompts.eval_prompts is not None \
        else default_eval_prompts(prompts)
    eval_prompts = []
    if config.measure.eval_examples and eval_source is not None:
        rows, source = prompt_records(eval_source, "eval_prompts")
        eval_prompts = tokenize_prompts(rows[:config.measure.eval_examples], tokenizer, config.prompts,
                                        "eval_prompts", source)
    elif config.measure.eval_examples and config.measure.judges:
        warnings.warn("judges are set but there are no held-out prompts to measure: pass --eval-prompts",
                      stacklevel=2)
    # the policy (LM + value head) and its reference
    reference = None
    if config.method == "lora":
        from gencycle.adapters import apply_lora
        lora = config.lora
        apply_lora(lm, rank=lora.lora_rank, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                   target_modules=lora.target)
    else:
        reference = frozen_copy(lm)
        for param in lm.parameters():
            param.requires_grad_(True)
    from gencycle.model.heads import ValueHead
    policy = ValueHead(lm).to(dist.device)
    trainer = PPOTrainer(policy, train_config, config.ppo, train_prompts, reward_fn, tokenizer, reference=reference,
                         device=dist.device)
    before = measure_policy(trainer, eval_prompts, judges, config.measure, "before") if eval_prompts else None
    monitor = MemoryMonitor(dist.device).start()
    history = trainer.train(resume=config.run.resume)
    monitor.stop()
    after = measure_policy(trainer, eval_prompts, judges, config.measure, "after") if eval_prompts else None
    out_dir = Path(config.run.out) if config.run.out is not None else None
    result = RlhfResult(config.method, out_dir, count_parameters(policy), trainer.train_seconds, monitor.peak_bytes,
                        monitor.kind, history, trainer.reward_name, len(eval_prompts),
                        threshold=config.measure.threshold, warnings=list(trainer.diagnostics["warned"]),
                        model=policy, restored_steps=trainer.restored_steps)
    if before is not None:
        result.table = compare(before, after, config.measure)
        result.samples = [{"prompt": p.text, "before": b, "after": a, "reward_before": rb, "reward_after": ra,
                           **{f"{name} before": before["judges"][name][i] for name in before["judges"]},
                           **{f"{name} after": after["judges"][name][i] for name in after["judges"]}}
                          for i, (p, b, a, rb, ra) in enumerate(zip(eval_prompts, before["completions"],
                                                                     after["completions"], before["rewards"],
                                                                     after["rewards"]))]
    if out_dir is not None:
        save_policy(policy, tokenizer, out_dir, adapter=config.method == "lora", base_name=loaded.path)
        steps.write_report(out_dir, result.to_dict())
        if result.samples:
            (out_dir / "eval_samples.jsonl").write_text(
                "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result.samples), encoding="utf-8")
    return result


def save_policy(policy, tokenizer, out_dir: Path, *, adapter: bool, base_name: str | None) -> Path:
    """The LM as a PEFT adapter folder (out/adapter) or an HF model folder (out/model), and the value
    head's weight in out/value_head.safetensors."""
    from safetensors.torch import save_file
    where = steps.save(policy.backbone, tokenizer, out_dir, adapter=adapter, base_name=base_name)
    save_file({"score.weight": policy.score.weight.detach().cpu().contiguous()}, str(out_dir / "value_head.safetensors"))
    return where


__all__ = ["PolicyMeasureConfig", "PromptsConfig", "RewardSettings", "RlhfConfig", "RlhfResult", "bootstrap_interval",
           "markdown_table", "prompt_records", "rlhf", "tokenize_prompts"]
