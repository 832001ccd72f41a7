"""scripts/scaling.py (issue 16, point 6): the approach-3 fit recovers a law it is given, the
compute-optimal split is the least loss on C = 6ND, and a tiny grid runs end to end (trains,
keeps its results, fits, plots) and continues instead of retraining."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import scaling  # noqa: E402

from pretrain_worker import write_corpus  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

LAW = {"E": 1.2, "A": 60.0, "B": 90.0, "alpha": 0.36, "beta": 0.26}  # not Chinchilla's, not the fit's starts


def grid_runs(law: dict) -> list[dict]:
    """The grid's shape (5 sizes x 3 budgets), losses computed from `law` without noise."""
    return [{"params": n, "tokens": d, "loss": scaling.predict(law, n, d)}
            for n in (25e3, 83e3, 2e5, 4.4e5, 9.9e5) for d in (2 ** 18, 2 ** 19, 2 ** 20)]


def test_fit_recovers_the_law_that_made_the_losses():
    fitted = scaling.fit(grid_runs(LAW))
    for name in ("alpha", "beta"):
        assert fitted[name] == pytest.approx(LAW[name], abs=0.02), name
    for run in grid_runs(LAW):  # and predicts every point
        assert scaling.predict(fitted, run["params"], run["tokens"]) == pytest.approx(run["loss"], rel=2e-3)


def test_optimum_is_the_least_loss_at_its_compute():
    compute = 1e13
    n, d, loss = scaling.optimum(LAW, compute)
    assert 6 * n * d == pytest.approx(compute)
    assert loss == pytest.approx(scaling.predict(LAW, n, d))
    for factor in (0.5, 0.9, 1.1, 2.0):
        assert scaling.predict(LAW, n * factor, compute / (6 * n * factor)) > loss
    # the split's exponent: N_opt grows as C^(beta / (alpha + beta))
    n10 = scaling.optimum(LAW, 10 * compute)[0]
    assert math.log10(n10 / n) == pytest.approx(LAW["beta"] / (LAW["alpha"] + LAW["beta"]))


def test_tiny_grid_end_to_end_and_continues(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", documents=60)
    out, plot = tmp_path / "run", tmp_path / "scaling.png"
    argv = ["--data", str(corpus), "--out", str(out), "--plot", str(plot), "--sizes", "16", "1", "32", "1",
            "--budgets", "2048", "4096"]  # one and two steps of 16 x 128 tokens
    scaling.main(argv)
    runs = json.loads((out / "results.json").read_text())
    assert sorted((r["hidden"], r["tokens"]) for r in runs) == [(16, 2048), (16, 4096), (32, 2048), (32, 4096)]
    for r in runs:
        assert r["compute"] == 6 * r["params"] * r["tokens"] and math.isfinite(r["loss"])
        assert r["loss"] < math.log(r["total_params"])  # below nothing at all, a loose sanity bound
    assert set(json.loads((out / "fit.json").read_text())) == {"E", "A", "B", "alpha", "beta", "huber"}
    assert plot.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert printed.count("layers, N = ") == 4
    assert "| fitted here |" in printed and "| Chinchilla (Hoffmann et al. 2022) |" in printed
    scaling.main(argv)  # every run is in results.json: nothing is trained again
    assert "layers, N = " not in capsys.readouterr().out  # the line each trained run prints
    assert json.loads((out / "results.json").read_text()) == runs
