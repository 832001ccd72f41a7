"""The fine-tuning workflow: full, LoRA and prompt tuning on a tiny decoder and a tiny T5; the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from ddp_worker import char_tokenizer, sort_task, tiny_decoder, tiny_t5
from gencycle import save_pretrained
from gencycle.training import TrainConfig, Trainer, collator_for, to_pairs, tokenize
from gencycle.workflows import (
    DataConfig, FinetuneConfig, LoraConfig, MeasureConfig, PromptTuningConfig, RunConfig, finetune,
)


pytestmark = pytest.mark.usefixtures("one_thread")


LR = {tiny_decoder: 1e-2, tiny_t5: 3e-3}  # full fine-tuning / pretraining of the tiny models


@pytest.fixture(scope="module")
def pretrained():
    """Tiny models trained on the sort task with its ascending / descending marker (prompt tuning
    steers a model that already knows the task; a random frozen model cannot be steered)."""
    models = {}
    for make in (tiny_decoder, tiny_t5):
        model = make()
        data = tokenize(to_pairs(sort_task(1024, 1, marker=True)), char_tokenizer(), model.config.architecture)
        config = TrainConfig(max_steps=200, batch_size=16, lr=LR[make], warmup_steps=10, progress=False)
        Trainer(model, config, data, collate_fn=collator_for(model.config)).train()
        models[make] = model
    return models


# (model, method) -> (steps, lr, eval-loss threshold). The loss of a random model is about ln(18) = 2.9;
# a model that ignores the prompt can do no better than ~1.1 (4 of 10 letters, sorted); prompt tuning
# starts from a model trained with the marker, which without it is unsure of the order.
CASES = {
    (tiny_decoder, "full"): (100, 1e-2, 0.3),
    (tiny_decoder, "lora"): (100, 1e-2, 0.8),
    (tiny_decoder, "prompt-tuning"): (60, 1e-1, 0.6),
    (tiny_t5, "full"): (150, 3e-3, 0.3),
    (tiny_t5, "lora"): (100, 1e-2, 0.9),
    (tiny_t5, "prompt-tuning"): (60, 1e-1, 0.2),
}


@pytest.mark.parametrize("make, method", list(CASES), ids=[f"{m.__name__}-{k}" for m, k in CASES])
def test_finetuning_lowers_eval_loss(make, method, pretrained, tmp_path):
    steps, lr, threshold = CASES[(make, method)]
    model = pretrained[make] if method == "prompt-tuning" else make()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = FinetuneConfig(
        method=method, run=RunConfig(out=tmp_path), measure=MeasureConfig(max_new_tokens=6),
        data=DataConfig(eval_data=sort_task(64, 3), test_data=sort_task(4, 4)),
        prompt_tuning=PromptTuningConfig(num_virtual_tokens=4),
        lora=LoraConfig(lora_rank=8, lora_alpha=16, lora_dropout=0.0, target=["attention", "mlp", "lm_head"]),
        train=TrainConfig(max_steps=steps, lr=lr, batch_size=16, warmup_steps=10, progress=False))
    result = finetune(model, sort_task(512, 2), config, tokenizer=char_tokenizer())
    assert result.eval_loss_after < min(threshold, result.eval_loss_before / 2), result.summary()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == steps and {"loss", "lr", "tokens_per_s"} <= set(json.loads(lines[0]))
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert set(result.rouge_after) == {"rouge1", "rouge2", "rougeL", "rougeLsum"} and len(result.samples) == 4
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["trainable_parameters"] == result.parameters.trainable and report["peak_memory_bytes"] > 0
    if method == "full":  # it has learnt the task: the generated test answers are right
        assert result.rouge_after["rouge1"] > result.rouge_before["rouge1"] and result.rouge_after["rouge1"] >= 0.75
        assert result.parameters.trainable == result.parameters.total
        assert (tmp_path / "model" / "config.json").exists()
        return
    # PEFT: the base weights did not move; only the adapter / soft prompt trained, a small share
    assert 0 < result.parameters.percent < 50
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    base = result.model.model if method == "prompt-tuning" else result.model
    for name, p in base.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(p, before[name]), name


def _model_folder(tmp_path):
    folder = tmp_path / "base"
    save_pretrained(tiny_decoder(), folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def test_cli_full_finetune_writes_a_loadable_model(tmp_path, capsys):
    from gencycle import load_model
    from gencycle.cli import main
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sort_task(64, 1)))
    args = ["finetune", str(_model_folder(tmp_path)), "--data", str(data), "--method", "full", "--max-steps", "4",
            "--batch-size", "8", "--lr", "1e-3", "--out", str(tmp_path / "run"), "--checkpoint-every", "2",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trainable params" in printed and "peak memory" in printed
    assert isinstance(load_model(tmp_path / "run" / "model"), torch.nn.Module)
    assert (tmp_path / "run" / "loss_curve.png").exists()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    # --resume from the finished run's last checkpoint has no step left to take
    assert main(args + ["--resume"]) == 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["steps"] == 4


def test_cli_reports_bad_input(tmp_path, capsys):
    from gencycle.cli import main
    folder = _model_folder(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    assert main(["finetune", str(folder), "--data", str(data), "--no-progress"]) == 2
    assert "record 2 has no 'output' field" in capsys.readouterr().err
    data.write_text("")
    assert main(["finetune", str(folder), "--data", str(data), "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    assert main(["finetune", str(folder), "--data", str(data), "--method", "lora", "--target", "nothing_here",
                 "--no-progress"]) == 2
    assert "matched no Linear module" in capsys.readouterr().err
    assert main(["finetune", str(folder), "--data", str(data), "--method", "lora", "--lora-rank", "0",
                 "--no-progress"]) == 2
    assert "rank must be a positive integer" in capsys.readouterr().err
