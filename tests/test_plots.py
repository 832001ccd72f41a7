"""gencycle's plots are drawn without pyplot: a caller's matplotlib backend (a notebook's inline
backend) is the same after them, and each writes its PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch

from gencycle.alignment.ppo import plot_curves
from gencycle.evaluation.report import VariantResult, plot_scores
from gencycle.inspection import plot_attention
from gencycle.training.report import plot_loss_curve
from gencycle.workflows.pretrain import plot_pretraining

HISTORY = [{"step": s, "loss": 3.0 - 0.1 * s, "eval_loss": 3.1 - 0.1 * s, "reward/mean": 0.1 * s, "reward/std": 0.1,
            "objective/rlhf_reward": 0.1 * s, "kl/mean": 0.01 * s, "kl/coef": 0.05} for s in range(1, 6)]

PLOTS = {
    "ppo curves": lambda p: plot_curves(HISTORY, p),
    "scores": lambda p: plot_scores([VariantResult("zero-shot", ["a"], {"rouge1": 0.2, "rougeL": 0.1})], p),
    "attention": lambda p: plot_attention(["a", "b", "c"], torch.softmax(torch.randn(2, 3, 3), -1), p),
    "loss curve": lambda p: plot_loss_curve(HISTORY, p),
    "pretraining curve": lambda p: plot_pretraining(HISTORY, Path(p), "pretraining", start=(0, 3.2)),
}


@pytest.fixture
def svg_backend():
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # any backend but Agg: the plots must not switch it
    yield
    matplotlib.use(before)


@pytest.mark.parametrize("name", PLOTS)
def test_a_plot_keeps_the_callers_backend_and_writes_its_png(name, tmp_path, svg_backend):
    written = Path(PLOTS[name](tmp_path / "plot.png"))
    assert matplotlib.get_backend() == "svg"
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
