"""`gencycle pretrain` under torchrun (issue 16, point 4): 2 processes on one machine (gloo) give the
weights and losses of 1 process with the doubled batch, data-parallel (DDP) and sharded (FSDP).

The whole workflow runs in each process (corpus split, packing, the objective's collator, the
Trainer, the gathered Hugging Face folder), so this also checks that masks and noise spans do not
depend on how the batch is split over processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gencycle.workflows.pretrain import pretrain
from pretrain_worker import tiny_config, write_corpus

WORKER = Path(__file__).with_name("pretrain_worker.py")
KIND = {"decoder": "bpe", "encoder": "wordpiece", "encoder-decoder": "unigram"}
STEPS = dict(max_steps=3, grad_accum=2, block_size=32, eval_every=3, lr=3e-3, sample_every=0, seed=0)
slow = pytest.mark.slow  # the other two objectives: 4 more torchrun jobs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gencycle.data.corpora import load_corpus
    from gencycle.training.tokenizer_training import train_tokenizer_from_texts
    root = tmp_path_factory.mktemp("pretrain-dist")
    corpus = write_corpus(root / "corpus", documents=60)
    train = load_corpus(corpus).split(0.05)[0]
    for arch, kind in KIND.items():
        train_tokenizer_from_texts(train, kind, 300, root / f"tok-{arch}", model_max_length=64, show_progress=False)
        tiny_config(root, arch)
    return root


def _flags(options: dict) -> list[str]:
    return [arg for k, v in options.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def _torchrun(root: Path, arch: str, strategy: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               "pretrain", "--data", str(root / "corpus"), "--tokenizer", str(root / f"tok-{arch}"),
               "--arch", arch, "--config", str(root / f"{arch}.json"), "--out", str(out), "--strategy", strategy,
               "--batch-size", "2", "--no-progress", *_flags(STEPS)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _losses(out: Path) -> tuple[list[float], list[float]]:
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [h["loss"] for h in history], [h["eval_loss"] for h in history if "eval_loss" in h]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("arch,strategy", [("decoder", "ddp"), ("decoder", "fsdp"),
                                           pytest.param("encoder", "ddp", marks=slow),
                                           pytest.param("encoder", "fsdp", marks=slow),
                                           pytest.param("encoder-decoder", "ddp", marks=slow),
                                           pytest.param("encoder-decoder", "fsdp", marks=slow)])
def test_two_processes_match_one_with_doubled_batch(arch, strategy, setup, tmp_path):
    _torchrun(setup, arch, strategy, tmp_path / "two")
    pretrain(setup / "corpus", setup / f"tok-{arch}", arch=arch, config=str(setup / f"{arch}.json"),
             out=tmp_path / "one", strategy="none", batch_size=4, progress=False, **STEPS)
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert two[0] == pytest.approx(one[0], abs=1e-5) and two[1] == pytest.approx(one[1], abs=1e-5)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["tokens_seen"] == json.loads((tmp_path / "one" / "report.json").read_text())["tokens_seen"]
    a = load_file(tmp_path / "two" / "model" / "model.safetensors")
    b = load_file(tmp_path / "one" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
