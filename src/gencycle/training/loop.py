"""The one training loop: `Trainer(model, TrainConfig(...), data).train()`.

    for each optimizer step:
        take grad_accum micro-batches from the seeded sampler (this process's share)
        loss_i = step_fn(model, batch_i)            under bf16 autocast where enabled
        backward(loss_i * weight_i / total weight)  weights: scored tokens, summed over processes
        clip the gradient norm, AdamW step, learning-rate schedule step
        every eval_every steps: eval loss;  every checkpoint_every steps: checkpoint

Only parameters with requires_grad are optimized, so a model whose trainable
parameters were chosen by `gencycle.adapters` (LoRA, soft prompts) trains as is.
`step_fn(model, batch) -> loss` is pluggable: fine-tuning uses `objectives.lm_step`;
PPO / DPO bring their own and reuse the optimizer, checkpoints and progress bar.
Under `torchrun` the same code runs data-parallel (DDP, or FSDP for big models).
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, get_args

import torch
from tqdm.auto import tqdm

from ..errors import OptionError
from . import checkpoint, distributed
from .data import EpochSampler
from .objectives import lm_step, processed_tokens, scored_tokens

StepFn = Callable[[torch.nn.Module, dict], torch.Tensor]
Schedule = Literal["cosine", "linear", "constant"]
Precision = Literal["auto", "fp32", "bf16"]
Strategy = Literal["auto", "none", "ddp", "fsdp"]
SCHEDULES, PRECISIONS = get_args(Schedule), get_args(Precision)
DEFAULT_LR = 1e-4  # when TrainConfig.lr is None and no workflow chose one


@dataclass
class TrainConfig:
    """How to train. Steps are optimizer steps; batch_size is per process and micro-batch.

    The string under each field is its help (the CLI's flags are made from them).
    """

    max_steps: int | None = None
    """optimizer steps (overrides --epochs)"""
    epochs: float = 1.0
    """passes over the training data (may be fractional) when --max-steps is not given"""
    batch_size: int = 8
    """examples per micro-batch, per process"""
    grad_accum: int = 1
    """micro-batches per optimizer step (gradient accumulation)"""
    lr: float | None = None
    """peak learning rate (default: the workflow's; 1e-4 for a Trainer built directly)"""
    weight_decay: float = 0.0
    """AdamW weight decay, >= 0, applied to matrices only (not norms, biases); 0: none"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)"""
    warmup_steps: int = 0
    """steps of linear learning-rate warm-up (0: none)"""
    schedule: Schedule = "cosine"
    """learning-rate decay after warm-up"""
    min_lr_ratio: float = 0.0
    """the schedule ends at lr x min_lr_ratio, in [0, 1]"""
    max_grad_norm: float | None = 1.0
    """clip the gradient norm to this, > 0 (none: no clipping)"""
    precision: Precision = "auto"
    """auto: bf16 autocast on a GPU that supports it; fp32; bf16"""
    seed: int = 0
    """random seed, >= 0: data order, dropout, the soft prompt's initial values"""
    shuffle: bool = True
    """shuffle the training examples each epoch"""
    eval_every: int | None = None
    """steps between eval-loss measurements (and one at the end)"""
    eval_batch_size: int | None = None
    """examples per evaluation batch (default: --batch-size)"""
    checkpoint_every: int | None = None
    """steps between checkpoints in the run folder"""
    keep_checkpoints: int = 2
    """newest checkpoints kept, older ones are deleted (0 keeps every one)"""
    save_trainable_only: bool = True
    """checkpoints hold requires_grad parameters only"""
    out_dir: str | None = None
    """folder for checkpoints/, metrics.jsonl, loss_curve.png"""
    strategy: Strategy = "auto"
    """auto: DDP under torchrun; none; ddp; fsdp shards a big model (full fine-tuning)"""
    progress: bool = True
    """show a progress bar"""
    extra: dict = field(default_factory=dict)
    """free-form settings for a custom step function (the loop does not read them)"""

    def __post_init__(self):
        def number(name, ok, problem, integer=False):
            value = getattr(self, name)
            bad_type = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
            if bad_type or not math.isfinite(value) or not ok(value):
                raise OptionError(name, problem, value)

        number("batch_size", lambda v: v >= 1, "must be an integer >= 1", integer=True)
        number("grad_accum", lambda v: v >= 1, "must be an integer >= 1", integer=True)
        if self.max_steps is not None:
            number("max_steps", lambda v: v >= 1, "must be an integer >= 1 (or None: from --epochs)", integer=True)
        number("epochs", lambda v: v > 0, "must be > 0")
        if self.lr is not None:
            number("lr", lambda v: v > 0, "must be positive")
        number("weight_decay", lambda v: v >= 0, "must be >= 0 (0 = no weight decay)")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise OptionError("betas", "must be two numbers in [0, 1)", self.betas)
        number("warmup_steps", lambda v: v >= 0, "must be an integer >= 0", integer=True)
        number("min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]")
        if self.max_grad_norm is not None:  # a negative norm flips the gradient; 0 zeroes it
            number("max_grad_norm", lambda v: v > 0, "must be > 0 (None, or `none` on the command line, "
                   "turns clipping off)")
        number("seed", lambda v: v >= 0, "must be an integer >= 0", integer=True)
        for name in ("eval_every", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) is not None:
                number(name, lambda v: v >= 1, "must be an integer >= 1 (or None: off / the default)",
                       integer=True)
        number("keep_checkpoints", lambda v: v >= 0, "must be an integer >= 0 (0 keeps every one)", integer=True)
        for name, choices in (("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("strategy", distributed.STRATEGIES)):
            if getattr(self, name) not in choices:
                raise OptionError(name, "", message=f"unknown {name} {getattr(self, name)!r}; use one of "
                                  f"{', '.join(choices)}")


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at step s: linear warm-up, then cosine / linear decay / constant."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * decay
    return factor


def seed_everything(seed: int) -> None:
    import random
    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Runs `config` on `model` over `train_data` (a list of examples that `collate_fn` batches).

    step_fn(model, batch) -> mean loss of the batch; weight_fn(batch) -> its weight in the mean
    (scored tokens by default); eval uses the same two on `eval_data`.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, train_data, *, eval_data=None,
                 collate_fn: Callable[[list], dict], step_fn: StepFn = lm_step,
                 weight_fn: Callable[[dict], int] = scored_tokens, device=None):
        self.config, self.train_data, self.eval_data = config, train_data, eval_data
        self.collate_fn, self.step_fn, self.weight_fn = collate_fn, step_fn, weight_fn
        self.dist = distributed.setup(device)
        seed_everything(config.seed + self.dist.rank)
        self.module = model.to(self.dist.device)
        strategy = "ddp" if config.strategy == "auto" else config.strategy
        self.model = distributed.wrap(self.module, strategy, self.dist)
        self.strategy = strategy if self.dist.enabled else "none"
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (every requires_grad is False)")
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        lr = DEFAULT_LR if config.lr is None else config.lr
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(config.betas),
                                           fused=self._fused(params))
        self.sampler = EpochSampler(len(train_data), config.batch_size, config.seed, config.shuffle,
                                    self.dist.rank, self.dist.world_size)
        steps_per_epoch = max(1, len(self.sampler) // config.grad_accum)
        self.max_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, self.max_steps))
        self.autocast_dtype = self._autocast_dtype()
        self.step, self.history, self.tokens_seen = 0, [], 0
        self.out_dir = Path(config.out_dir) if config.out_dir else None

    def _fused(self, params) -> bool | None:
        """The fused AdamW kernel (one pass over each tensor) where it exists: CUDA, and CPU for fp32/bf16."""
        if self.strategy == "fsdp":
            return None  # sharded (DTensor) parameters take the default implementation
        device = self.dist.device.type
        ok = device == "cuda" or (device == "cpu" and all(p.dtype in (torch.float32, torch.bfloat16) for p in params))
        return True if ok else None

    def _autocast_dtype(self) -> torch.dtype | None:
        precision, device = self.config.precision, self.dist.device
        if precision == "bf16" or (precision == "auto" and device.type == "cuda"
                                   and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return None

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.dist.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------ one optimizer step
    def train_step(self) -> dict:
        """grad_accum micro-batches, one AdamW step; returns the step's loss, lr, tokens, grad_norm."""
        self.model.train()
        batches = [self.collate_fn([self.train_data[i] for i in self.sampler.next_batch()])
                   for _ in range(self.config.grad_accum)]
        weights = [float(self.weight_fn(b)) for b in batches]
        # total weight over all processes: each backward scales by weight_i / total (x world_size,
        # because data-parallel gradient reduction averages over processes)
        totals = self.dist.all_reduce(torch.tensor([sum(weights), sum(map(processed_tokens, batches))],
                                                   dtype=torch.float64, device=self.dist.device))
        total_weight, tokens = totals[0].item(), int(totals[1].item())
        loss_sum = torch.zeros((), device=self.dist.device)
        for i, (batch, weight) in enumerate(zip(batches, weights)):
            last = i == len(batches) - 1
            sync = nullcontext() if last or self.strategy != "ddp" else self.model.no_sync()
            with sync:
                with self.autocast():
                    loss = self.step_fn(self.model, self._to_device(batch))
                scale = weight / max(total_weight, 1e-12)
                (loss * scale * self.dist.world_size).backward()
            loss_sum += loss.detach().float() * scale
        grad_norm = None
        if self.config.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.config.max_grad_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += tokens
        loss = self.dist.all_reduce(loss_sum).item()
        return {"step": self.step, "loss": loss, "lr": lr, "tokens": tokens, "grad_norm": grad_norm}

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, data=None) -> float:
        """Weighted mean loss over `data` (default eval_data), split across processes."""
        data = self.eval_data if data is None else data
        if data is None or len(data) == 0:
            raise ValueError("no evaluation data")
        self.model.eval()
        size = self.config.eval_batch_size or self.config.batch_size
        mine = list(range(self.dist.rank, len(data), self.dist.world_size))
        total = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        starts = range(0, len(mine), size)
        show = self.config.progress and self.dist.is_main
        for start in tqdm(starts, desc="eval loss", unit="batch", leave=False, disable=not show, dynamic_ncols=True):
            batch = self.collate_fn([data[i] for i in mine[start:start + size]])
            weight = float(self.weight_fn(batch))
            with self.autocast():
                loss = self.step_fn(self.model, self._to_device(batch))
            total += torch.tensor([loss.item() * weight, weight], dtype=torch.float64, device=self.dist.device)
        self.dist.all_reduce(total)
        self.model.train()
        return (total[0] / total[1].clamp(min=1e-12)).item()

    # ------------------------------------------------------------ the run
    def train(self, resume: bool | str | Path = False) -> list[dict]:
        """Train to max_steps; returns the history (one dict per step, eval_loss where evaluated).

        resume=True continues from the newest checkpoint in out_dir/checkpoints (if any);
        a path continues from that checkpoint.
        """
        if resume:
            self.resume(resume)
        cfg = self.config
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not (cfg.progress and self.dist.is_main),
                   desc="training", dynamic_ncols=True)
        started = time.perf_counter()
        while self.step < self.max_steps:
            t0 = time.perf_counter()
            record = self.train_step()
            elapsed = time.perf_counter() - t0
            record["tokens_per_s"] = record["tokens"] / max(elapsed, 1e-9)
            if cfg.eval_every and self.eval_data is not None and (
                    self.step % cfg.eval_every == 0 or self.step == self.max_steps):
                record["eval_loss"] = self.evaluate()
            self.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:,.0f}",
                            **({"eval": f"{record['eval_loss']:.4f}"} if "eval_loss" in record else {}))
            bar.update(1)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.train_seconds = time.perf_counter() - started
        if self.out_dir is not None and self.dist.is_main:
            self.write_metrics()
        return self.history

    def write_metrics(self) -> None:
        from .report import plot_loss_curve
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))
        if self.history:
            plot_loss_curve(self.history, self.out_dir / "loss_curve.png")

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(), "history": self.history, "tokens_seen": self.tokens_seen,
                "max_steps": self.max_steps, "config": asdict(self.config)}

    def save_checkpoint(self) -> Path | None:
        if self.out_dir is None:
            raise ValueError("checkpoints need TrainConfig(out_dir=...)")
        return checkpoint.save(self, self.out_dir / "checkpoints")

    def load_checkpoint(self, path: str | Path) -> dict:
        """Restore the run from a checkpoint folder; returns its saved state."""
        return checkpoint.load(self, Path(path))

    # Settings a resumed run takes from this run's config rather than the checkpoint's
    FOLLOWED = ("max_steps", "epochs", "lr", "warmup_steps", "schedule", "min_lr_ratio", "weight_decay", "betas",
                "max_grad_norm", "precision")

    def resume(self, resume: bool | str | Path = True) -> Path | None:
        """Continue from a checkpoint (True: the newest in out_dir), and say what was restored and
        what this run changes. Changed schedule settings (max_steps, lr, warm-up, ...) are followed:
        the learning rate at the restored step is the new schedule's, not the old one's last value.
        Without a checkpoint, says so (a warning) and starts from step 0."""
        if resume is True:
            path = checkpoint.latest(self.out_dir)
            if path is None:
                where = self.out_dir / "checkpoints" if self.out_dir is not None else "(no out_dir)"
                warnings.warn(f"resume: no checkpoint in {where}; starting from step 0", stacklevel=3)
                return None
        else:
            path = Path(resume)
        state = self.load_checkpoint(path)
        saved = dict(state.get("config", {}), max_steps=state.get("max_steps"))
        now = dict(asdict(self.config), max_steps=self.max_steps)
        changed = [f"{k} {_show(saved[k])} -> {_show(now[k])}" for k in self.FOLLOWED
                   if k in saved and _show(saved[k]) != _show(now[k])]
        self._follow_config()
        seed = f"; data order from the checkpoint (seed {saved['seed']})" if saved.get("seed") != self.config.seed \
            and "seed" in saved else ""
        if self.dist.is_main:
            left = (f"{self.max_steps - self.step} step(s) to go" if self.step < self.max_steps
                    else "no step left to train")
            print(f"resumed from {path}: step {self.step} of {self.max_steps}, {left}; restored the weights, "
                  f"optimizer, schedule position, data order and random state{seed}", file=sys.stderr)
            if changed:
                print(f"this run changes {', '.join(changed)}: the learning rate follows the new schedule from step "
                      f"{self.step + 1} (lr {self.optimizer.param_groups[0]['lr']:.3g})", file=sys.stderr)
        return path

    def _follow_config(self) -> None:
        """After a restore: this config's lr, betas and weight decay, and the lr of the schedule at this step."""
        lr = DEFAULT_LR if self.config.lr is None else self.config.lr
        factor = lr_lambda(self.config, self.max_steps)(self.step)
        for group in self.optimizer.param_groups:
            decays = group["params"][0].ndim >= 2
            group.update(initial_lr=lr, lr=lr * factor, betas=tuple(self.config.betas),
                         weight_decay=self.config.weight_decay if decays else 0.0)
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
