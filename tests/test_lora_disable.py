"""disable_adapters: the base model inside the block, the adapted one outside (PPO's reference)."""

from __future__ import annotations

import copy

import pytest
import torch

import gencycle
from gencycle.generation import generate
from gencycle.adapters import apply_lora, disable_adapters, lora_layers, merge_lora, unmerge_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def base_and_adapted():
    """A tiny random Llama and a copy with non-zero LoRA adapters on every Linear layer."""
    base = gencycle.Transformer(gencycle.preset("tiny-llama", vocab_size=64, num_layers=2)).eval()
    model = apply_lora(copy.deepcopy(base), rank=4, alpha=8, target_modules="all-linear")
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(std=0.2)
    return base, model


IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_inside_is_the_base_model_outside_the_adapted_one():
    base, model = base_and_adapted()
    adapted, reference = model(IDS).logits, base(IDS).logits
    assert not torch.allclose(adapted, reference)
    with disable_adapters(model) as same:
        assert same is model
        assert torch.equal(model(IDS).logits, reference)
        assert torch.equal(generate(model, IDS, max_new_tokens=5),
                           generate(base, IDS, max_new_tokens=5))
    assert torch.equal(model(IDS).logits, adapted)


@torch.no_grad()
def test_an_exception_inside_still_enables_the_adapters_again():
    _, model = base_and_adapted()
    adapted = model(IDS).logits
    with pytest.raises(RuntimeError, match="boom"):
        with disable_adapters(model):
            raise RuntimeError("boom")
    assert torch.equal(model(IDS).logits, adapted)


@torch.no_grad()
def test_nested_blocks_restore_the_outer_state():
    base, model = base_and_adapted()
    with disable_adapters(model):
        with disable_adapters(model):
            pass
        assert torch.equal(model(IDS).logits, base(IDS).logits)
    assert all(not layer.disabled for layer in lora_layers(model).values())


def test_reference_forward_without_grad_while_the_policy_trains():
    """PPO's pattern: policy forward with gradients, reference forward (no grad, adapters off),
    then the policy's backward: its gradients are those of the policy alone."""
    _, model = base_and_adapted()
    model.train()

    def policy_grads(with_reference: bool):
        model.zero_grad()
        loss = model(IDS).logits.logsumexp(-1).mean()
        if with_reference:
            with torch.no_grad(), disable_adapters(model):
                reference = model(IDS).logits
            assert not reference.requires_grad
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    alone, together = policy_grads(False), policy_grads(True)
    assert alone.keys() == together.keys() and all(torch.equal(alone[n], together[n]) for n in alone)

    model.zero_grad()
    with disable_adapters(model):  # with gradients: the base path only, adapters get none
        out = model(IDS).logits
    assert not out.requires_grad  # every base parameter is frozen by apply_lora
    assert all(p.grad is None for p in model.parameters())


@torch.no_grad()
def test_merged_layers_and_models_without_adapters_are_refused():
    base, model = base_and_adapted()
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        with disable_adapters(model):
            pass
    unmerge_lora(model)
    with disable_adapters(model):
        assert torch.allclose(model(IDS).logits, base(IDS).logits, atol=1e-5)
        with pytest.raises(ValueError, match="disabled"):
            merge_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with disable_adapters(base):
            pass


@torch.no_grad()
def test_lora_on_a_model_fused_for_inference_goes_on_the_separate_layers():
    """fuse_projections() joins q|k|v and gate|up; apply_lora splits them back and adapts q_proj / v_proj."""
    base = gencycle.Transformer(gencycle.preset("tiny-llama", vocab_size=64, num_layers=2)).eval()
    expected = base(IDS).logits
    fused = copy.deepcopy(base).fuse_projections()
    assert not any(name.endswith("q_proj") for name, _ in fused.named_modules())
    model = apply_lora(fused, rank=4, alpha=8)
    assert sorted({name.rsplit(".", 1)[-1] for name in lora_layers(model)}) == ["q_proj", "v_proj"]
    torch.testing.assert_close(model(IDS).logits, expected, rtol=0, atol=1e-5)  # lora_B starts at zero
