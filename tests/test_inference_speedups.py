"""Inference speed-ups in the model: fused q|k|v and gate|up projections (layers.FusedLinears: one
matmul at inference, with the parameters, their names, training, LoRA and the Hugging Face round
trip unchanged), and the one-query attention path used when decoding in bf16."""

import copy

import torch

import gencycle
from gencycle.adapters import apply_lora, merge_lora


def model_pair():
    torch.manual_seed(0)
    config = gencycle.preset("tiny-llama", vocab_size=128)
    plain = gencycle.Transformer(config).eval()
    fused = copy.deepcopy(plain).fuse_projections()
    return plain, fused


def shares_storage(*tensors) -> bool:
    return len({t.untyped_storage().data_ptr() for t in tensors}) == 1


def test_fusing_changes_storage_not_parameters():
    plain, fused = model_pair()
    attention, mlp = fused.decoder.layers[0].self_attn, fused.decoder.layers[0].mlp
    assert shares_storage(attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)
    assert shares_storage(mlp.gate_proj.weight, mlp.up_proj.weight)
    assert list(plain.state_dict()) == list(fused.state_dict())
    assert plain.num_parameters() == fused.num_parameters()
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        assert attention._fused.usable([attention.q_proj, attention.k_proj, attention.v_proj])
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)


def test_load_model_fuses_and_the_hf_round_trip_still_works(tmp_path):
    plain, _ = model_pair()
    gencycle.save_pretrained(plain, tmp_path / "a")
    loaded = gencycle.load_model(tmp_path / "a", device="cpu")
    assert loaded.decoder.layers[0].self_attn._fused is not None
    gencycle.save_pretrained(loaded, tmp_path / "b")
    again = gencycle.load_model(tmp_path / "b", device="cpu")
    for (name, a), b in zip(plain.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_updates_reach_the_fused_weight():
    _, fused = model_pair()
    fused.train()
    ids = torch.randint(0, 128, (2, 12))
    loss = fused(ids).logits.logsumexp(-1).mean()  # grad mode: the layers run one by one
    loss.backward()
    q_proj = fused.decoder.layers[0].self_attn.q_proj
    assert q_proj.weight.grad is not None and q_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in fused.parameters():
            p -= 0.1 * p.grad if p.grad is not None else 0
    fused.eval()
    reference = copy.deepcopy(fused)  # a deep copy has its own storage per parameter: unfused
    assert reference.decoder.layers[0].self_attn._fused is None
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_dtype_change_refuses_and_lora_falls_back():
    plain, fused = model_pair()
    ids = torch.randint(0, 128, (1, 9))
    fused_bf16, plain_bf16 = copy.deepcopy(fused).fuse_projections().to(torch.bfloat16), copy.deepcopy(plain).to(torch.bfloat16)
    attention = fused_bf16.decoder.layers[1].self_attn
    assert attention._fused.weight.dtype == torch.bfloat16
    assert attention._fused.usable([attention.q_proj, attention.k_proj, attention.v_proj]) is False  # grad mode
    with torch.no_grad():
        assert attention._fused.usable([attention.q_proj, attention.k_proj, attention.v_proj])
        torch.testing.assert_close(fused_bf16(ids).logits, plain_bf16(ids).logits, rtol=0.02, atol=0.02)

    # LoRA replaces q_proj / v_proj: the fused path steps aside, and comes back after merging
    torch.manual_seed(1)
    apply_lora(fused, rank=2, target_modules=("q_proj", "v_proj"))
    torch.manual_seed(1)
    apply_lora(plain, rank=2, target_modules=("q_proj", "v_proj"))
    for model in (fused, plain):
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        for name, p in fused.named_parameters():
            dict(plain.named_parameters())[name].copy_(p)
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)
        merge_lora(fused, unload=True)
        attention = fused.decoder.layers[0].self_attn
        assert attention._fused.usable([attention.q_proj, attention.k_proj, attention.v_proj])
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-4)


def test_one_query_attention_equals_sdpa():
    """Decoding in bf16 takes plain matmuls instead of SDPA's kernel: same numbers (GQA, padding, T5 bias)."""
    from gencycle.model.layers import Attention
    config = gencycle.preset("tiny-llama")
    attention = Attention(config, 0).eval()
    B, H, Hkv, S, D = 3, config.num_heads, config.num_kv_heads, 11, config.head_dim
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
    padding = torch.zeros(B, 1, 1, S).masked_fill(torch.rand(B, 1, 1, S) < 0.3, -1e9)
    for mask in (None, padding, torch.randn(1, H, 1, S)):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=attention.scale, enable_gqa=True)
        torch.testing.assert_close(attention._one_query_attention(q, k, v, mask), expected, rtol=1e-5, atol=1e-5)
