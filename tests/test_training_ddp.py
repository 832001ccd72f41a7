"""Data-parallel training under torchrun (gloo, 2 CPU processes) matches one process with the doubled batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_worker import char_tokenizer, reverse_task, tiny_decoder
from gencycle.training import EpochSampler, TrainConfig, Trainer, collator_for, tokenize

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(out: Path, strategy: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(out), "--strategy", strategy]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def _single_process_reference() -> tuple[dict, list[float]]:
    """What ddp_worker.main does, on one process with batch_size doubled (4 -> 8)."""
    model = tiny_decoder()
    data = tokenize(reverse_task(64, seed=1), char_tokenizer(), max_length=32)
    config = TrainConfig(max_steps=4, batch_size=8, grad_accum=2, lr=3e-3, seed=0, progress=False,
                         max_grad_norm=1.0)
    trainer = Trainer(model, config, data, collate_fn=collator_for(model.config), device="cpu")
    losses = [h["loss"] for h in trainer.train()]
    return trainer.module.state_dict(), losses


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_doubled_batch(strategy, tmp_path):
    """Same weights as one process with batch 8; and a resumed run reaches the straight run's weights."""
    result = _torchrun(tmp_path / "weights.pt", strategy)
    # each process resumed from its step-2 checkpoint reaches the same weights as the straight run
    assert result["resumed_losses"] == pytest.approx(result["losses"], abs=1e-6)
    for name, tensor in result["state"].items():
        torch.testing.assert_close(result["resumed_state"][name], tensor, atol=1e-6, rtol=0, msg=name)
    state, losses = _single_process_reference()
    assert result["losses"] == pytest.approx(losses, abs=1e-5)
    for name, tensor in state.items():
        torch.testing.assert_close(result["state"][name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_sampler_shards_are_the_global_batch():
    one = EpochSampler(10, batch_size=4, seed=3)
    ranks = [EpochSampler(10, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == 3
    for _ in range(6):  # two epochs: the order is drawn again for the second
        assert sorted(one.next_batch()) == sorted(ranks[0].next_batch() + ranks[1].next_batch())
    odd = [EpochSampler(5, batch_size=2, rank=r, world_size=2) for r in range(2)]  # padded by wrapping round
    seen = [i for _ in range(len(odd[0])) for s in odd for i in s.next_batch()]
    assert len(seen) == 6 and set(seen) == set(range(5))
