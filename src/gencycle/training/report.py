"""What a training run costs and how it went: trainable parameters, peak memory, time, loss curve."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} of {self.total:,} ({self.percent:.4g}%)"


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Parameters counted once each (tied matrices once), trainable = requires_grad."""
    params = list(model.parameters())  # .parameters() already skips repeated (tied) tensors
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def _rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class MemoryMonitor:
    """Peak memory between `start()` and `stop()`: CUDA max allocated on a GPU, else process RSS.

    RSS is sampled by a background thread (every `interval` s), so the peak of a run can be
    measured even when the process held more memory earlier. `peak_bytes` is the highest value
    seen; `baseline_bytes` is the value at start (the model and data already loaded).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device, self.interval = torch.device(device), interval
        self.baseline_bytes = self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "rss"

    def start(self) -> "MemoryMonitor":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = self.peak_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self.baseline_bytes = self.peak_bytes = _rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def stop(self) -> int:
        if self.device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
        return self.peak_bytes

    def __enter__(self) -> "MemoryMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def plot_loss_curve(history: list[dict], path: str | Path, title: str = "training loss") -> Path:
    """Training loss per step (and eval loss where measured) -> PNG."""
    from matplotlib.figure import Figure  # no pyplot: the global backend (a notebook's) stays as it is

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval", linewidth=1.5)
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats / token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def format_bytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
