"""Inference speed-ups in the model: q|k|v and gate|up fused into one Linear each (model/fusion.py:
one matmul per group, with the state_dict names, training and the Hugging Face round trip
unchanged), and the one-query attention path used when decoding in bf16."""

import copy

import pytest
import torch
from torch import nn

import gencycle
from gencycle.adapters import apply_lora, merge_lora
from gencycle.model import cpu_kernels
from gencycle.model.fusion import FusedLinear, fuse_for_inference, unfuse_projections

SHAPES = {"tiny-llama": dict(vocab_size=128),
          "gpt2-124m": dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                            max_position_embeddings=64)}


def model_pair(preset: str = "tiny-llama"):
    torch.manual_seed(0)
    plain = gencycle.Transformer(gencycle.preset(preset, **SHAPES[preset])).eval()
    return plain, fuse_for_inference(copy.deepcopy(plain))


def assert_same_state(a: nn.Module, b: nn.Module, **tolerance) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)  # the same names in the same order
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], msg=name, **(tolerance or dict(rtol=0, atol=0)))


@pytest.mark.parametrize("preset", ["tiny-llama", "gpt2-124m"])
def test_fusing_replaces_the_layers_and_keeps_their_names(preset):
    plain, fused = model_pair(preset)
    attention, mlp = fused.decoder.layers[0].self_attn, fused.decoder.layers[0].mlp
    assert isinstance(attention.qkv_proj, FusedLinear) and attention.q_proj is None
    assert attention.qkv_proj.bias is not None if preset == "gpt2-124m" else attention.qkv_proj.bias is None
    if preset == "tiny-llama":
        assert isinstance(mlp.gate_up_proj, FusedLinear) and mlp.gate_proj is None and mlp.up_proj is None
    else:  # GPT-2's MLP is not gated: nothing to fuse
        assert mlp.gate_up_proj is None and type(mlp.up_proj) is nn.Linear
    assert plain.num_parameters() == fused.num_parameters()
    assert_same_state(plain, fused)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)
    assert fuse_for_inference(fused).decoder.layers[0].self_attn.qkv_proj is attention.qkv_proj  # twice: no change


@pytest.mark.parametrize("preset", ["tiny-llama", "gpt2-124m"])
def test_a_fused_model_saves_and_loads_the_separate_names(preset, tmp_path):
    plain, fused = model_pair(preset)
    gencycle.save_pretrained(fused, tmp_path / "fused")  # the HF layout (GPT-2: q|k|v joined as c_attn)
    loaded = gencycle.load_model(tmp_path / "fused", device="cpu")
    assert type(loaded.decoder.layers[0].self_attn.q_proj) is nn.Linear  # load_model does not fuse
    assert_same_state(plain, loaded)

    torch.manual_seed(1)
    state = gencycle.Transformer(plain.config).state_dict()
    names, weight = list(state), fused.decoder.layers[0].self_attn.qkv_proj.weight
    fused.load_state_dict(state)  # strict: the separate names are joined into the fused weights
    assert list(state) == names and fused.decoder.layers[0].self_attn.qkv_proj.weight is weight  # in place
    plain.load_state_dict(fused.state_dict())
    assert_same_state(plain, fused)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*self_attn\.qkv_proj\.weight"):
        fused.load_state_dict({k: v for k, v in state.items() if ".0.self_attn.k_proj." not in k})


def test_training_a_fused_model_takes_the_same_steps():
    plain, fused = model_pair()
    ids, q_weight = torch.randint(0, 128, (2, 12)), plain.decoder.layers[0].self_attn.q_proj.weight.clone()
    for model in (plain, fused):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(2):
            model(ids).logits.logsumexp(-1).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert not torch.equal(plain.decoder.layers[0].self_attn.q_proj.weight, q_weight)  # the steps did move it
    assert_same_state(plain, fused, rtol=1e-5, atol=1e-6)


def test_dtype_moves_and_copies_keep_the_fusion():
    plain, fused = model_pair()
    with torch.inference_mode():
        fused = fuse_for_inference(unfuse_projections(fused))
    assert not fused.decoder.layers[0].self_attn.qkv_proj.weight.is_inference()  # ordinary, versioned tensors
    fused_bf16, plain_bf16 = copy.deepcopy(fused).to(torch.bfloat16), copy.deepcopy(plain).to(torch.bfloat16)
    assert fused_bf16.decoder.layers[1].self_attn.qkv_proj.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(fused_bf16(ids).logits, plain_bf16(ids).logits, rtol=0.02, atol=0.02)


def test_lora_takes_the_separate_layers_and_fusing_steps_around_it():
    plain, fused = model_pair()
    unfuse_projections(fused)
    assert all(type(fused.get_submodule(f"decoder.layers.0.{name}")) is nn.Linear
               for name in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj"))
    assert_same_state(plain, fused)
    for model in (fused, plain):
        apply_lora(model, rank=2, target_modules=("q_proj", "v_proj"))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    fuse_for_inference(fused)  # q|k|v holds LoRA layers: it stays as it is; gate|up fuses
    attention, ids = fused.decoder.layers[0].self_attn, torch.randint(0, 128, (1, 9))
    assert attention.qkv_proj is None and isinstance(fused.decoder.layers[0].mlp.gate_up_proj, FusedLinear)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)
        for model in (fused, plain):
            merge_lora(model, unload=True)
        fuse_for_inference(fused)
        assert isinstance(attention.qkv_proj, FusedLinear)
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


@pytest.mark.skipif(not cpu_kernels.attention_available(), reason="gencycle's attention kernel is not built here")
def test_the_decode_attention_kernel_equals_sdpa_and_reads_only_the_attended_slots():
    """bf16 decoding on the CPU runs gencycle's attention kernel (cpu_kernels.py): SDPA's numbers in fp32
    up to bf16 rounding, for GQA, padding masks (bf16 / fp32, per row or shared) and no mask, over a
    cache's narrowed views. Masked slots before the first and after the last attended one are not read
    (NaN there changes nothing): a compiled step's unfilled cache slots cost nothing."""
    from gencycle.model.layers import Attention
    config = gencycle.preset("tiny-llama").replace(hidden_size=256, num_heads=4, num_kv_heads=2, head_dim=64)
    attention = Attention(config, 0).eval()
    B, H, Hkv, S, D = 3, 4, 2, 37, 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g).bfloat16()
    cache = torch.randn(2, B, Hkv, S + 5, D, generator=g).bfloat16()
    k, v = cache[0].narrow(2, 0, S), cache[1].narrow(2, 0, S)           # (B, Hkv, S, D), not contiguous
    allowed = torch.ones(B, S, dtype=torch.bool)
    allowed[0, :9] = False                                              # left padding
    allowed[:, 30:] = False                                             # slots not filled yet
    allowed[1, 4] = False                                               # a hole: read, weighted 0
    k[~allowed[:, None, :, None].expand_as(k) & (torch.arange(S) != 4)[None, None, :, None]] = float("nan")
    v[~allowed[:, None, :, None].expand_as(v) & (torch.arange(S) != 4)[None, None, :, None]] = float("nan")
    padding = torch.zeros(B, 1, 1, S).masked_fill(~allowed[:, None, None, :], torch.finfo(torch.float32).min)
    finite_k, finite_v = k.float().nan_to_num(), v.float().nan_to_num()
    for mask in (padding, padding.bfloat16(), padding[:1], None):
        got = attention._one_query_attention(q, k, v, mask)
        if mask is None:  # every slot attended: NaN-free keys and values
            got = attention._one_query_attention(q, finite_k.bfloat16(), finite_v.bfloat16(), None)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.float(), finite_k, finite_v, attn_mask=None if mask is None else mask.float(), scale=attention.scale,
            enable_gqa=True)
        assert got.dtype == torch.bfloat16 and not got.isnan().any()
        torch.testing.assert_close(got.float(), expected, rtol=0.02, atol=0.01)
    with pytest.raises(RuntimeError, match="decode_attention: bias must be"):
        torch.ops.gencycle.decode_attention(q.view(B, H, D), k, v, padding[..., :5], 0.125)


@pytest.mark.skipif(not cpu_kernels.attention_available(), reason="gencycle's CPU kernels are not built here")
def test_the_cpu_kernels_split_their_work_over_torchs_threads_without_changing_a_number():
    """The kernels' at::parallel_for is OpenMP only when the extension is built with -fopenmp (without
    it, it silently compiles to a serial loop, as it did for several sessions): the library calls
    libgomp's GOMP_parallel, and 1 thread and 2 threads give the same bits (each thread writes whole
    rows / output blocks; no sum is split between threads)."""
    from pathlib import Path
    library = next(path for path in torch.ops.loaded_libraries if "gencycle_cpu_kernels" in path)
    assert b"GOMP_parallel" in Path(library).read_bytes()
    from gencycle.model.cpu_kernels import pack_int4
    g = torch.Generator().manual_seed(0)
    N, K = 64, 128
    weights = pack_int4(torch.randint(0, 16, (N, K), generator=g), torch.rand(N, K // 32, generator=g) / 8,
                        torch.randn(N, K // 32, generator=g) / 8, 32)
    x = torch.randn(8, K, generator=g).bfloat16()
    q = torch.randn(4, 8, 64, generator=g).bfloat16()
    k, v = torch.randn(2, 4, 4, 50, 64, generator=g).bfloat16()
    bias = torch.zeros(4, 1, 1, 50).masked_fill_(torch.rand(4, 1, 1, 50, generator=g) < 0.2, float("-inf"))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((torch.ops.gencycle.int4_mm(x, *weights, 32),
                            torch.ops.gencycle.decode_attention(q, k, v, bias, 0.125)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)
