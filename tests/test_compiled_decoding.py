"""Compiled decoding (gencycle.generation.compiled) gives the tokens eager decoding gives.

Eager decoding is itself checked token for token against `transformers.generate`
(test_generation.py), so equality here carries that over. Each test compiles a graph for a
tiny model (tens of seconds the first time; torch caches compiled graphs on disk).
"""

import shutil

import pytest
import torch

import gencycle
from gencycle.generation.compiled import CompiledDecodeState, _onednn_fp32_linears, cache_slots, has_cpp_compiler
from gencycle.generation.state import DecodeState
from gencycle.model.quantize import quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")
needs_compiler = pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler")
V = 96


SHAPES = {"tiny-llama": {}, "gpt2-124m": dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)}


def tiny(preset: str, seed: int = 0) -> gencycle.Transformer:
    torch.manual_seed(seed)
    config = gencycle.preset(preset, vocab_size=V, max_position_embeddings=64, **SHAPES[preset])
    model = gencycle.Transformer(config)
    with torch.no_grad():  # larger weights: peakier, more varied next-token distributions
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model.fuse_projections().eval()


def ragged_prompts():
    """4 left-padded prompts of lengths 9, 6, 3, 7 and their mask."""
    g = torch.Generator().manual_seed(3)
    ids, mask = torch.randint(3, V, (4, 9), generator=g), torch.ones(4, 9, dtype=torch.long)
    for row, length in enumerate([9, 6, 3, 7]):
        ids[row, :9 - length], mask[row, :9 - length] = 0, 0
    return ids, mask


def eager_and_compiled(model, *args, **kwargs):
    eager = gencycle.generate(model, *args, **kwargs)
    step = gencycle.compile_decoding(model).compiled_decoding
    calls, function = [], step.function
    step.function = lambda *a: calls.append(1) or function(*a)
    compiled = gencycle.generate(model, *args, **kwargs)
    del model.compiled_decoding
    assert len(calls) == compiled.shape[1] - args[0].shape[1] - 1  # every step after the prefill ran compiled
    return eager, compiled


@needs_compiler
@pytest.mark.parametrize("preset", ["tiny-llama", "gpt2-124m"])
def test_greedy_and_sampling_equal_eager_on_a_ragged_batch(preset):
    model = tiny(preset)
    ids, mask = ragged_prompts()
    free = gencycle.generate(model, ids, mask, max_new_tokens=12, eos_token_id=[])
    eos = [int(free[0, 11]), int(free[2, 14])]  # tokens the model does produce: rows end at different steps
    eager, compiled = eager_and_compiled(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(eager, compiled)
    assert (compiled[:, 9:] == 0).any() and compiled.shape[1] > 10   # some rows finished early, others ran on
    sampled = dict(do_sample=True, top_k=20, temperature=0.9, seed=7, max_new_tokens=12, eos_token_id=[])
    eager, compiled = eager_and_compiled(model, ids, mask, **sampled)
    assert torch.equal(eager, compiled)


@needs_compiler
def test_two_models_of_one_shape_keep_their_own_weights():
    """Weights are frozen into each graph: a second model with the same shapes must not reuse the first's."""
    ids = torch.randint(3, V, (1, 5))
    first, second = tiny("tiny-llama", seed=1), tiny("tiny-llama", seed=2)
    expected = [gencycle.generate(m, ids, max_new_tokens=8, eos_token_id=[]) for m in (first, second)]
    assert not torch.equal(*expected)
    got = [gencycle.generate(gencycle.compile_decoding(m), ids, max_new_tokens=8, eos_token_id=[])
           for m in (first, second)]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@needs_compiler
def test_a_quantized_model_compiles_close_to_eager():
    model = gencycle.compile_decoding(quantize_model(tiny("tiny-llama"), "int8"))
    ids = torch.randint(3, V, (1, 6))
    state_logits = []
    with torch.inference_mode():
        for kind in (DecodeState, CompiledDecodeState):
            state = kind(model, ids, None, 4)
            state(ids)
            state_logits.append(state(ids[:, -1:]))
    torch.testing.assert_close(state_logits[1], state_logits[0], rtol=0.02, atol=0.05)  # bf16 matmul inputs, fused differently


def test_fp32_weights_are_packed_for_onednn_while_tracing():
    """The faster fp32 kernel choice reaches inductor's weight-packing pass of this torch, and is undone after."""
    from torch._inductor.fx_passes.mkldnn_fusion import CpuMkldnnDeviceOp
    original = CpuMkldnnDeviceOp.pack_linear_weight
    graph = torch.fx.Graph()
    weight = graph.placeholder("weight")
    assert CpuMkldnnDeviceOp().pack_linear_weight(graph, False, weight, 1).target != torch.ops.mkldnn._reorder_linear_weight
    with _onednn_fp32_linears():
        assert CpuMkldnnDeviceOp().pack_linear_weight(graph, False, weight, 1).target == torch.ops.mkldnn._reorder_linear_weight
        packed = graph.placeholder("packed")
        linear = CpuMkldnnDeviceOp().pack_linear(graph, False, 1, weight, graph.call_function(
            torch.ops.mkldnn._reorder_linear_weight, (packed, 1)), None)
        assert linear.target == torch.ops.mkldnn._linear_pointwise.default
    assert CpuMkldnnDeviceOp.pack_linear_weight is original


def test_cache_sizes_and_errors(monkeypatch):
    assert [cache_slots(n) for n in (1, 64, 65, 256, 257)] == [64, 64, 128, 256, 512]
    encoder_decoder = gencycle.Transformer(gencycle.preset("tiny-llama", architecture="encoder-decoder"))
    with pytest.raises(ValueError, match="decoder-only"):
        gencycle.compile_decoding(encoder_decoder)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C[+][+] compiler"):
        gencycle.compile_decoding(tiny("tiny-llama"))
