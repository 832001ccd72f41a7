"""The training loop: it learns, it resumes exactly, it checkpoints what it should."""

from __future__ import annotations

import json

import pytest
import torch

from ddp_worker import char_tokenizer, reverse_task, tiny_decoder
from gencycle.training import (
    IGNORE_INDEX, TrainConfig, Trainer, causal_lm_loss, collator_for, count_parameters, tokenize,
)
from gencycle.training import checkpoint


def _data(architecture: str, n: int, seed: int):
    return tokenize(reverse_task(n, seed), char_tokenizer(), architecture, max_length=32)


def _trainer(model, tmp_path=None, train=None, eval_data=None, **config):
    arch = model.config.architecture
    config = TrainConfig(**{"progress": False, "out_dir": str(tmp_path) if tmp_path else None, **config})
    return Trainer(model, config, train or _data(arch, 256, 1), eval_data=eval_data,
                   collate_fn=collator_for(model.config))


pytestmark = pytest.mark.usefixtures("one_thread")


# (learning to lower the eval loss, full / LoRA / prompt tuning: tests/test_training_finetune.py)
def test_bf16_autocast_on_cpu_trains():
    trainer = _trainer(tiny_decoder(), max_steps=8, batch_size=16, lr=1e-2, precision="bf16")
    assert trainer.autocast_dtype == torch.bfloat16
    history = trainer.train()
    assert history[-1]["loss"] < history[0]["loss"] - 0.3


def test_pinned_first_losses():
    """torchtune-style: the first steps of a fixed recipe give these losses (any change to the loop,
    data order, loss or model that alters them shows here)."""
    trainer = _trainer(tiny_decoder(), max_steps=4, batch_size=8, grad_accum=2, lr=3e-3, warmup_steps=2)
    losses = [h["loss"] for h in trainer.train()]
    assert losses == pytest.approx(PINNED, abs=2e-4), losses


PINNED = [2.8767, 2.7683, 2.6314, 2.5146]


# ------------------------------------------------------------------ resume
class Crash(RuntimeError):
    pass


def test_resume_continues_exactly(tmp_path):
    """2N steps straight == N steps, crash, resume, N more (dropout on, shuffling across epochs)."""
    def run(out, crash_after_calls=None, resume=False):
        calls = {"n": 0}

        def step(model, batch):
            calls["n"] += 1
            if crash_after_calls is not None and calls["n"] > crash_after_calls:
                raise Crash
            from gencycle.training import lm_step
            return lm_step(model, batch)

        model = tiny_decoder(dropout=0.1)
        config = TrainConfig(max_steps=10, batch_size=8, grad_accum=2, lr=3e-3, warmup_steps=3,
                             checkpoint_every=5, out_dir=str(out), progress=False, seed=7)
        trainer = Trainer(model, config, _data("decoder", 40, 3), collate_fn=collator_for(model.config),
                          step_fn=step)
        trainer.train(resume=resume)
        return trainer

    straight = run(tmp_path / "straight")
    with pytest.raises(Crash):
        run(tmp_path / "crashed", crash_after_calls=2 * 5 + 1)  # dies inside step 6, after checkpoint 5
    assert checkpoint.latest(tmp_path / "crashed").name == "step-00000005"
    resumed = run(tmp_path / "crashed", resume=True)
    assert resumed.history[-1]["step"] == 10
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], abs=1e-5)
    for (name, a), b in zip(straight.module.state_dict().items(), resumed.module.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_checkpoint_holds_only_trainable_weights(tmp_path):
    """With trainable parameters chosen elsewhere (as adapters do), only those are saved and changed."""
    model = tiny_decoder()
    for name, p in model.named_parameters():
        p.requires_grad = ".q_proj." in name or ".v_proj." in name
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = _trainer(model, tmp_path, max_steps=3, batch_size=8, lr=1e-2, checkpoint_every=3)
    trainer.train()
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert sorted(saved) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    for name, before in frozen.items():
        assert torch.equal(before, model.get_parameter(name)), name
    counts = count_parameters(model)
    assert 0 < counts.trainable < counts.total and "trainable params" in str(counts)


def test_checkpoint_write_is_atomic_and_pruned(tmp_path):
    trainer = _trainer(tiny_decoder(), tmp_path, max_steps=6, batch_size=8, checkpoint_every=2, keep_checkpoints=2,
                       save_trainable_only=False)
    trainer.train()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000004", "step-00000006"]
    (root / "step-00000008.tmp").mkdir()  # a save that died half-way is never resumed from
    assert checkpoint.latest(tmp_path).name == "step-00000006"


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    _trainer(tiny_decoder(), tmp_path, max_steps=2, batch_size=8, checkpoint_every=2).train()
    for changed, message in ((dict(num_layers=3), "lacks trainable weights"),
                             (dict(num_layers=1), "weights this model lacks"),
                             (dict(intermediate_size=96), "shape")):
        other = _trainer(tiny_decoder(**changed), tmp_path, max_steps=4, batch_size=8)
        with pytest.raises(ValueError, match=message):
            other.train(resume=True)


# ------------------------------------------------------------------ objectives and config
def test_causal_lm_loss_scores_completion_tokens_only():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1]])  # positions 2, 3 are the completion
    expected = torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 1]))
    torch.testing.assert_close(causal_lm_loss(logits, labels), expected)
    # soft-prompt models return P extra leading positions: they are skipped
    torch.testing.assert_close(causal_lm_loss(torch.cat([torch.randn(1, 2, 5), logits], 1), labels), expected)
    assert causal_lm_loss(logits, torch.full((1, 4), IGNORE_INDEX)).item() == 0.0


def test_lm_step_computes_logits_only_where_labels_are_and_matches_the_full_loss():
    from gencycle.adapters import apply_prompt_tuning
    from gencycle.training import Collator, Example, lm_step
    from gencycle.training.objectives import logits_needed
    # right padding, prompts of different lengths: label 2 of row 2 is the first, so logits from position 1 on
    batch = Collator(pad_token_id=0)([Example([3, 4, 5, 6, 7, 1], [-100, -100, -100, 6, 7, 1]),
                                      Example([3, 4, 8, 1], [-100, -100, 8, 1])])
    assert logits_needed(batch["labels"]) == 5
    for model in (tiny_decoder(), apply_prompt_tuning(tiny_decoder(), 3)):
        full = causal_lm_loss(model(batch["input_ids"], batch["attention_mask"]).logits, batch["labels"])
        torch.testing.assert_close(lm_step(model, batch), full)


@pytest.mark.parametrize("bad, message", [
    (dict(batch_size=0), "batch_size"), (dict(lr=-1.0), "lr"), (dict(schedule="step"), "unknown schedule"),
    (dict(precision="fp8"), "unknown precision"), (dict(strategy="tp"), "unknown strategy"),
])
def test_bad_config_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_model_without_trainable_parameters_is_refused():
    model = tiny_decoder().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        _trainer(model, max_steps=1)


def test_schedule_warms_up_then_decays():
    from gencycle.training.loop import lr_lambda
    f = lr_lambda(TrainConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1), total_steps=14)
    values = [f(s) for s in range(15)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and values[4] == 1.0
    assert values[9] == pytest.approx(0.55) and values[14] == pytest.approx(0.1)
    linear = lr_lambda(TrainConfig(schedule="linear"), total_steps=10)
    assert [linear(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
