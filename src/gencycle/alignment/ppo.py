"""PPO with a KL penalty to a frozen reference (Ziegler et al. 2019; Ouyang et al. 2022).

    trainer = PPOTrainer(ValueHead(apply_lora(model)), TrainConfig(...), PPOConfig(...),
                         prompts, reward, tokenizer)
    trainer.train()

One PPO step (one optimizer *round*, `Trainer.step` counts them):

    rollout   B prompts from the seeded sampler -> sample a response each (LoRA active)
              -> log p (policy), values (its value head), entropy   one no-grad forward
              -> log q (the reference: adapters off, or a frozen copy)  one no-grad forward
    score     decode -> reward(prompts, completions) -> score (B,)
    rewards   -kl_coef * KL estimate on every response token, + score on the last one
              (optionally whitened), GAE -> advantages (whitened) and returns
    update    ppo_epochs passes over the rows in shuffled mini-batches; each: forward with grad,
              clipped policy loss + vf_coef * clipped value loss, backward, clip the gradient norm,
              AdamW step
    after     the learning-rate schedule steps; the KL controller moves the coefficient (adaptive)

`PPOTrainer` is the training loop's `Trainer` with its own step: it reuses its optimizer (AdamW
over the trainable parameters: LoRA + value head, or all), schedule, seeded prompt sampler,
precision, checkpoints (atomic, resumable: the KL coefficient and the diagnostics' state ride
along) and progress bar. Dropout stays off (eval mode) in rollouts and updates, so the first
mini-batch's ratio is exactly 1. Sampling and mini-batch order are seeded by (seed, step), so a
resumed run continues exactly.

Diagnostics: every step appends a record to `metrics.jsonl` (reward/mean, reward/std, kl/mean,
kl/coef, objective/rlhf_reward, entropy, response_length, policy/clipfrac, policy/approx_kl,
ratio/mean, value/loss, time/rollout, time/score, time/update, ...), samples (prompt, response,
reward) go to `samples.jsonl` every `sample_every` steps, `reward_kl.png` plots the curves, and
a `PPOWarning` is raised once for each sign of trouble: the mean KL below -1 or above `kl_warning`,
a mini-batch's mean ratio outside [0.5, 2], responses collapsing (distinct tokens per response
half of the first step's).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import torch
from tqdm.auto import tqdm

from gencycle.errors import OptionError, UserError
from gencycle.training.loop import TrainConfig, Trainer

from . import rollout as rollouts
from .losses import (KL_KINDS, AdaptiveKLController, FixedKLController, gae, kl_estimate, kl_penalized_rewards,
                     masked_mean, masked_sum, policy_loss, value_loss, whiten)
from .rewards import check_scores

KLEstimator = Literal["k1", "k3"]
RATIO_BOUNDS = (0.5, 2.0)


class PPOWarning(UserWarning):
    """A sign that a PPO run is going wrong (KL, ratio, collapsing responses)."""


@dataclass
class PPOConfig:
    """PPO with a KL penalty: rollouts, rewards, updates, diagnostics."""

    ppo_epochs: int = 4
    """passes over each rollout batch (each pass: shuffled mini-batches, one optimizer step each)"""
    mini_batch_size: int = 4
    """rollout rows per optimizer step"""
    kl_coef: float = 0.2
    """weight of the per-token KL penalty, >= 0 (the start value when --adaptive-kl; 0: no penalty)"""
    adaptive_kl: bool = True
    """steer kl_coef towards --kl-target (Ziegler et al.); off: kl_coef stays fixed"""
    kl_target: float = 6.0
    """adaptive KL: the KL per response (nats) to steer to"""
    kl_horizon: float = 10000
    """adaptive KL: rows over which the coefficient moves by the clipped error (larger: slower)"""
    kl_estimator: KLEstimator = "k1"
    """per-token KL estimate in the penalty: k1 = log p - log q, k3 = (q/p - 1) - log(q/p) (>= 0)"""
    gamma: float = 1.0
    """GAE discount, in [0, 1] (1: none, TRL's default)"""
    lam: float = 0.95
    """GAE lambda (1: Monte-Carlo returns, 0: one-step TD)"""
    clip_range: float = 0.2
    """policy ratio clipped to [1 - clip_range, 1 + clip_range]"""
    clip_range_value: float = 0.2
    """value prediction clipped to the rollout's value +- this"""
    vf_coef: float = 0.1
    """weight of the value loss in the total loss, >= 0 (0: the value head does not learn)"""
    whiten_rewards: bool = False
    """scale the per-token rewards to unit variance over the batch before GAE (advantages are always whitened)"""
    max_new_tokens: int = 32
    """response tokens sampled at most per prompt"""
    min_new_tokens: int = 0
    """EOS is blocked until this many response tokens (0: a response may end at once)"""
    temperature: float = 1.0
    """sampling temperature of rollouts (the policy's log-probabilities use the same)"""
    top_k: int = 0
    """rollouts sample among the k most likely tokens (0: all; truncation biases the KL estimate)"""
    top_p: float = 1.0
    """rollouts sample from the nucleus of this mass (1: all)"""
    max_prompt_length: int = 512
    """prompt tokens kept (a longer prompt loses its start)"""
    kl_warning: float = 20.0
    """warn when the mean KL per response (nats) goes above this"""
    sample_every: int = 10
    """steps between samples (prompt, response, reward) written to samples.jsonl (0: never)"""
    samples_per_step: int = 4
    """rows written each time (0: none)"""

    def __post_init__(self):
        def check(name, ok, problem, integer=False):
            value = getattr(self, name)
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not ok(value):
                raise OptionError(name, problem, value)

        for name in ("ppo_epochs", "mini_batch_size", "max_prompt_length"):
            check(name, lambda v: v >= 1, "must be an integer >= 1", integer=True)
        check("max_new_tokens", lambda v: v >= 1, "must be an integer >= 1: a response of 0 tokens has nothing "
              "to reward", integer=True)
        check("min_new_tokens", lambda v: 0 <= v <= self.max_new_tokens,
              f"must be an integer in [0, max_new_tokens={self.max_new_tokens}]", integer=True)
        check("kl_coef", lambda v: v >= 0, "must be >= 0 (the weight of the KL penalty; 0 turns it off)")
        for name in ("kl_target", "kl_horizon", "clip_range", "clip_range_value", "kl_warning"):
            check(name, lambda v: v > 0, "must be > 0")
        for name in ("gamma", "lam"):
            check(name, lambda v: 0 <= v <= 1, "must be in [0, 1]")
        check("vf_coef", lambda v: v >= 0, "must be >= 0")
        check("temperature", lambda v: v > 0, "must be > 0 (rollouts sample)")
        check("top_k", lambda v: v >= 0, "must be an integer >= 0 (0: all tokens)", integer=True)
        check("top_p", lambda v: 0 < v <= 1, "must be in (0, 1]")
        for name in ("sample_every", "samples_per_step"):
            check(name, lambda v: v >= 0, "must be an integer >= 0", integer=True)
        if self.kl_estimator not in get_args(KLEstimator):
            raise OptionError("kl_estimator", "", message=f"unknown kl_estimator {self.kl_estimator!r}; use k1 or k3")

    def kl_controller(self):
        if self.adaptive_kl:
            return AdaptiveKLController(self.kl_coef, self.kl_target, self.kl_horizon)
        return FixedKLController(self.kl_coef)

    def generation_config(self, seed: int | None):
        from gencycle.generation import GenerationConfig
        return GenerationConfig(max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                                do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                seed=seed)


@dataclass
class Prompt:
    """One prompt: the text a reward reads, and the token ids the policy continues."""
    text: str
    ids: list[int]


Reward = Callable[[Sequence[str], Sequence[str]], list[float]]


def step_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s sampling and mini-batch order."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


class PPOTrainer(Trainer):
    """PPO on `policy`, a `ValueHead` over the policy LM (its `backbone`, LoRA adapters on it or not).

    reference: None uses the policy with its adapters switched off (LoRA; no second copy in memory);
    otherwise a frozen model (full training: `frozen_copy(model)` before training) that shares
    nothing mutable with the policy. prompts: `Prompt`s; reward: fn(prompts, completions) -> floats.
    """

    def __init__(self, policy: torch.nn.Module, config: TrainConfig, ppo: PPOConfig, prompts: Sequence[Prompt],
                 reward: Reward, tokenizer, *, reference: torch.nn.Module | None = None, device=None):
        from gencycle.adapters import lora_layers
        from gencycle.training import distributed
        if not hasattr(policy, "backbone") or not hasattr(policy, "score"):
            raise UserError("the PPO policy is a ValueHead(model): the LM and its value head "
                             "(gencycle.model.heads.ValueHead)")
        if distributed.setup(device).enabled:
            raise UserError("PPO runs in one process (rollouts, reference and reward on one device); "
                             "run it without torchrun")
        if not policy.config.has_decoder:
            raise UserError("PPO needs a model that generates (decoder-only or encoder-decoder), "
                             "not an encoder-only one")
        if reference is None and not lora_layers(policy.backbone):
            raise UserError("the policy has no LoRA adapters, so switching them off gives no reference: "
                             "pass reference=frozen_copy(model) (full training)")
        if reference is not None:
            shared = {id(p) for p in reference.parameters()} & {id(p) for p in policy.parameters()}
            if shared:
                raise UserError(f"the reference shares {len(shared)} parameter tensors with the policy; "
                                 "use frozen_copy(model), taken before training")
        prompts = list(prompts)
        if not prompts:
            raise UserError("no prompts to train on")
        super().__init__(policy, config, prompts, collate_fn=list, device=device)
        self.ppo, self.reward, self.tokenizer = ppo, reward, tokenizer
        self.reference = reference.to(self.dist.device).eval() if reference is not None else None
        self.kl_ctl = ppo.kl_controller()
        self.diagnostics = {"warned": [], "distinct_tokens_first": None}
        self.reward_name = getattr(reward, "name", getattr(reward, "__qualname__", "reward"))

    # ------------------------------------------------------------ pieces of a step
    @property
    def lm(self) -> torch.nn.Module:
        return self.module.backbone

    def prompt_ids(self, batch: list[Prompt]) -> list[list[int]]:
        keep = self.ppo.max_prompt_length
        if self.lm.config.architecture == "decoder" and self.lm.config.position != "relative":
            keep = min(keep, self.lm.config.max_position_embeddings - self.ppo.max_new_tokens)
            if keep < 1:
                raise UserError(f"max_new_tokens={self.ppo.max_new_tokens} leaves no room for a prompt in the "
                                 f"context window of {self.lm.config.max_position_embeddings} tokens")
        return [p.ids[-keep:] for p in batch]

    @torch.no_grad()
    def rollout(self, batch: list[Prompt], seed: int | None) -> dict:
        """Sample, then the policy's log-probs / values / entropy and the reference's log-probs."""
        self.module.eval()
        t0 = time.perf_counter()
        with self.autocast():
            sampled = rollouts.sample(self.lm, self.prompt_ids(batch), self.ppo.generation_config(seed))
        t1 = time.perf_counter()
        with self.autocast():
            policy = rollouts.score_tokens(self.lm, sampled, self.module.score, temperature=self.ppo.temperature,
                                           entropy=True)
            reference = self.reference_scores(sampled)
        return {"batch": sampled, "policy": policy, "ref_logprobs": reference.logprobs,
                "time_generate": t1 - t0, "time_forward": time.perf_counter() - t1}

    def reference_scores(self, sampled: rollouts.ResponseBatch, temperature: float | None = None) -> rollouts.TokenScores:
        """The reference's log-probabilities of the sampled responses (at the rollout temperature by default)."""
        temperature = self.ppo.temperature if temperature is None else temperature
        if self.reference is not None:
            return rollouts.score_tokens(self.reference, sampled, temperature=temperature)
        from gencycle.adapters import disable_adapters
        with disable_adapters(self.lm):
            return rollouts.score_tokens(self.lm, sampled, temperature=temperature)

    def completions(self, sampled: rollouts.ResponseBatch) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in sampled.responses()]

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        scores = check_scores(self.reward(prompts, completions), len(completions), self.reward_name)
        return torch.tensor(scores, dtype=torch.float32, device=self.dist.device)

    def update(self, sampled, old_logprobs, old_values, advantages, returns, seed: int) -> dict:
        """ppo_epochs passes of shuffled mini-batches; one clipped optimizer step each; mean stats."""
        cfg, mask = self.ppo, sampled.response_mask
        params = [p for p in self.module.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(seed)
        rows = mask.shape[0]
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(rows, generator=generator)
            for start in range(0, rows, cfg.mini_batch_size):
                index = order[start:start + cfg.mini_batch_size].to(mask.device)
                mini = sampled.rows(index)
                with self.autocast():
                    out = rollouts.score_tokens(self.lm, mini, self.module.score, temperature=cfg.temperature)
                pg_loss, pg = policy_loss(out.logprobs, old_logprobs[index], advantages[index], mini.response_mask,
                                          cfg.clip_range)
                vf_loss, vf = value_loss(out.values, old_values[index], returns[index], mini.response_mask,
                                         cfg.clip_range_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                loss.backward()
                grad_norm = None
                if self.config.max_grad_norm is not None:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                values = {"loss": loss.item(), "policy/loss": pg_loss.item(), "value/loss": vf_loss.item(),
                          "policy/clipfrac": pg["clipfrac"].item(), "policy/approx_kl": pg["approx_kl"].item(),
                          "ratio/mean": pg["ratio_mean"].item(), "value/clipfrac": vf["clipfrac"].item()}
                if grad_norm is not None:
                    values["grad_norm"] = grad_norm
                for key, value in values.items():
                    stats.setdefault(key, []).append(value)
        out = {key: sum(v) / len(v) for key, v in stats.items()}
        out["ratio/min"], out["ratio/max"] = min(stats["ratio/mean"]), max(stats["ratio/mean"])
        return out

    @torch.no_grad()
    def measure(self, prompts: Sequence[Prompt], seed: int, batch_size: int = 8, desc: str | None = None) -> dict:
        """One sampled reply per prompt (seeded as `seed`, batch by batch; the rollout settings), and per
        reply: its reward, its KL to the reference (the sum over its tokens of log p - log q under the
        rollout temperature) and the reference's log-probability of its tokens (temperature 1), with
        the token count: the perplexity of the replies under the reference is
        exp(-sum(ref_logprob) / sum(tokens)). Returns lists, one entry per prompt."""
        out = {"completions": [], "rewards": [], "kl": [], "ref_logprob": [], "tokens": []}
        starts = range(0, len(prompts), batch_size)
        for k, start in enumerate(tqdm(starts, desc=desc, unit="batch", leave=False,
                                       disable=desc is None or not self.config.progress)):
            batch = list(prompts[start:start + batch_size])
            rolled = self.rollout(batch, step_seed(seed, k))
            sampled, mask = rolled["batch"], rolled["batch"].response_mask
            completions = self.completions(sampled)
            reference = rolled["ref_logprobs"]
            kl = masked_sum(kl_estimate(rolled["policy"].logprobs, reference, "k1"), mask, -1)
            if self.ppo.temperature != 1.0:  # the reference model itself, not its tempered distribution
                with self.autocast():
                    reference = self.reference_scores(sampled, temperature=1.0).logprobs
            out["completions"] += completions
            out["rewards"] += self.score([p.text for p in batch], completions).tolist()
            out["kl"] += kl.tolist()
            out["ref_logprob"] += masked_sum(reference, mask, -1).tolist()
            out["tokens"] += mask.sum(-1).tolist()
        return out

    # ------------------------------------------------------------ one PPO step
    def train_step(self) -> dict:
        cfg = self.ppo
        batch = [self.train_data[i] for i in self.sampler.next_batch()]
        seed = step_seed(self.config.seed, self.step)
        t0 = time.perf_counter()
        rolled = self.rollout(batch, seed)
        sampled, policy, ref_logprobs = rolled["batch"], rolled["policy"], rolled["ref_logprobs"]
        mask = sampled.response_mask
        t1 = time.perf_counter()
        prompts, completions = [p.text for p in batch], self.completions(sampled)
        scores = self.score(prompts, completions)
        t2 = time.perf_counter()
        kl_coef = self.kl_ctl.kl_coef
        with torch.no_grad():
            rewards = kl_penalized_rewards(scores, policy.logprobs, ref_logprobs, mask, kl_coef, cfg.kl_estimator)
            if cfg.whiten_rewards and int(mask.sum()) >= 2:
                rewards = whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, policy.values, mask, cfg.gamma, cfg.lam)
            if int(mask.sum()) >= 2:
                advantages = whiten(advantages, mask)
            kl_per_row = masked_sum(kl_estimate(policy.logprobs, ref_logprobs, cfg.kl_estimator), mask, -1)  # (B,)
        t3 = time.perf_counter()
        update = self.update(sampled, policy.logprobs, policy.values, advantages, returns, seed + 1)
        self.scheduler.step()
        lr = self.optimizer.param_groups[0]["lr"]
        kl_mean = kl_per_row.mean().item()
        self.kl_ctl.update(kl_mean, len(batch))
        self.step += 1
        t4 = time.perf_counter()
        lengths = mask.sum(-1).float()
        tokens = int(sampled.attention_mask.sum()) + (int(mask.sum()) if sampled.encoder_decoder else 0)
        self.tokens_seen += tokens
        record = {
            "step": self.step, "loss": update.pop("loss"), "lr": lr, "tokens": tokens,
            "reward/mean": scores.mean().item(),
            "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
            "kl/mean": kl_mean, "kl/coef": kl_coef,
            "objective/rlhf_reward": (scores - kl_coef * kl_per_row).mean().item(),
            "entropy": masked_mean(policy.entropy, mask).item(),
            "response_length": lengths.mean().item(),
            "distinct_tokens": sum(len(set(r)) for r in sampled.responses()) / len(batch),
            "advantages/mean": masked_mean(advantages, mask).item(),
            "returns/mean": masked_mean(returns, mask).item(),
            "value/mean": masked_mean(policy.values, mask).item(),
            **update,
            "time/rollout": t1 - t0, "time/generate": rolled["time_generate"], "time/forward": rolled["time_forward"],
            "time/score": t2 - t1, "time/update": t4 - t3,
        }
        fired = self.check(record)
        if fired:
            record["warnings"] = fired
        self.log(record, prompts, completions, scores.tolist())
        return record

    # ------------------------------------------------------------ diagnostics
    def check(self, record: dict) -> list[str]:
        """Warn once for each sign of trouble; returns the kinds that fired this step."""
        d, step, fired = self.diagnostics, record["step"], []
        if d["distinct_tokens_first"] is None:
            d["distinct_tokens_first"] = record["distinct_tokens"]
        first = d["distinct_tokens_first"]
        low, high = RATIO_BOUNDS
        checks = {
            "negative_kl": (record["kl/mean"] < -1,
                            f"PPO step {step}: the mean KL to the reference is {record['kl/mean']:.2f} nats per "
                            "response, below -1. The estimate can dip below 0 by chance but should not stay there; "
                            "a KL this negative means the sampled tokens are unlikely under the policy that scores "
                            "them (top_k / top_p truncation at sampling, or updates too large). Sample with "
                            "top_k 0 and top_p 1, lower the learning rate, or use --kl-estimator k3."),
            "high_kl": (record["kl/mean"] > self.ppo.kl_warning,
                        f"PPO step {step}: the mean KL to the reference is {record['kl/mean']:.2f} nats per response, "
                        f"above --kl-warning {self.ppo.kl_warning:g}. The policy is moving far from the reference, "
                        "where reward hacking starts: read samples.jsonl, raise --kl-coef or lower the learning "
                        "rate."),
            "ratio": (not low <= record["ratio/min"] <= record["ratio/max"] <= high,
                      f"PPO step {step}: a mini-batch's mean probability ratio (new / old policy) was "
                      f"{record['ratio/min']:.3f} .. {record['ratio/max']:.3f}, outside [{low}, {high}]. The updates "
                      "are too large for PPO's clipping to hold: lower the learning rate or --ppo-epochs, or raise "
                      "--mini-batch-size."),
            "collapse": (first > 0 and record["distinct_tokens"] < first / 2,
                         f"PPO step {step}: responses are collapsing: {record['distinct_tokens']:.1f} distinct tokens "
                         f"per response against {first:.1f} at the first step. The policy may have found a "
                         "degenerate answer that the reward likes (reward hacking): read samples.jsonl, raise "
                         "--kl-coef or lower the learning rate."),
        }
        for kind, (bad, message) in checks.items():
            if bad and kind not in d["warned"]:
                d["warned"].append(kind)
                fired.append(kind)
                warnings.warn(message, PPOWarning, stacklevel=3)
        return fired

    def log(self, record: dict, prompts: list[str], completions: list[str], scores: list[float]) -> None:
        """Append the step's record to metrics.jsonl and, every sample_every steps, rows to samples.jsonl."""
        if self.out_dir is None or not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        every, n = self.ppo.sample_every, self.ppo.samples_per_step
        if every and n and (record["step"] % every == 0 or record["step"] == 1):
            with open(self.out_dir / "samples.jsonl", "a") as f:
                for prompt, completion, score in list(zip(prompts, completions, scores))[:n]:
                    f.write(json.dumps({"step": record["step"], "prompt": prompt, "response": completion,
                                        "reward": score}) + "\n")

    # ------------------------------------------------------------ the run
    def train(self, resume: bool | str | Path = False) -> list[dict]:
        """max_steps PPO steps; returns the history. resume: True continues from the newest checkpoint
        in out_dir, a path from that checkpoint."""
        if resume:
            self.resume(resume)
        elif self.out_dir is not None and self.dist.is_main:
            for name in ("metrics.jsonl", "samples.jsonl"):  # a fresh run starts fresh logs
                (self.out_dir / name).unlink(missing_ok=True)
        cfg = self.config
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not cfg.progress, desc="PPO", dynamic_ncols=True)
        self.restored_steps = self.step  # steps a resumed run took from its checkpoint: train_seconds excludes them
        started = time.perf_counter()
        while self.step < self.max_steps:
            t0 = time.perf_counter()
            record = self.train_step()
            record["tokens_per_s"] = record["tokens"] / max(time.perf_counter() - t0, 1e-9)
            self.history.append(record)
            bar.set_postfix(reward=f"{record['reward/mean']:.3f}", kl=f"{record['kl/mean']:.2f}",
                            rlhf=f"{record['objective/rlhf_reward']:.3f}", ratio=f"{record['ratio/mean']:.3f}")
            bar.update(1)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.train_seconds = time.perf_counter() - started
        if self.out_dir is not None:
            self.write_metrics()
        return self.history

    def write_metrics(self) -> None:
        """metrics.jsonl from the whole history (in order, once each), and the reward / KL curves."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))
        if self.history:
            plot_curves(self.history, self.out_dir / "reward_kl.png")

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {**super().state(), "kl_controller": self.kl_ctl.state_dict(), "diagnostics": self.diagnostics}

    def load_checkpoint(self, path: str | Path) -> dict:
        state = super().load_checkpoint(path)
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.diagnostics = state["diagnostics"]
        if self.out_dir is not None and self.dist.is_main:  # drop log lines of steps after the checkpoint
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))
            samples = self.out_dir / "samples.jsonl"
            if samples.exists():
                kept = [line for line in samples.read_text().splitlines() if json.loads(line)["step"] <= self.step]
                samples.write_text("".join(line + "\n" for line in kept))
        return state


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A reference for full-weight PPO: a deep copy, frozen, in eval mode, sharing no tensor with `model`."""
    import copy
    reference = copy.deepcopy(model).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Reward (mean +- std, and score - kl_coef x KL) and KL (with its coefficient) per step -> PNG."""
    from matplotlib.figure import Figure  # no pyplot: the global backend (a notebook's) stays as it is

    path = Path(path)
    steps = [h["step"] for h in history]
    mean = [h["reward/mean"] for h in history]
    std = [h["reward/std"] for h in history]
    fig = Figure(figsize=(7, 6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(steps, mean, label="reward (mean)", linewidth=1.2)
    top.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2,
                     label="reward +- std")
    top.plot(steps, [h["objective/rlhf_reward"] for h in history], label="score - kl_coef x KL", linewidth=1.2)
    top.set(ylabel="reward", title="PPO: reward and KL to the reference")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.plot(steps, [h["kl/mean"] for h in history], color="tab:red", label="KL per response (nats)")
    bottom.set(xlabel="PPO step", ylabel="KL (nats)")
    bottom.grid(alpha=0.3)
    twin = bottom.twinx()
    twin.plot(steps, [h["kl/coef"] for h in history], color="tab:gray", linestyle="--", label="kl_coef")
    twin.set_ylabel("kl_coef")
    lines = bottom.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    bottom.legend(lines, [line.get_label() for line in lines], fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


__all__ = ["KL_KINDS", "PPOConfig", "PPOTrainer", "PPOWarning", "Prompt", "frozen_copy", "plot_curves", "step_seed"]
