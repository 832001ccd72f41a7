"""The inference defaults (gencycle.generation.defaults): chosen by the hardware, said in one line,
overridable, and compiled decoding gives eager decoding's tokens for every choice they can make."""

import pytest
import torch

import gencycle
from gencycle.generation import defaults
from gencycle.generation.compiled import has_cpp_compiler
from gencycle.generation.defaults import inference_defaults
from gencycle.model.quantize import native_bf16_matmul, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_this_machine_gets_its_fastest_precision_and_compiled_decoding():
    choice = inference_defaults()
    assert choice.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choice.dtype == ("bf16" if native_bf16_matmul(choice.device) else "fp32")
    assert choice.compile == (defaults.compiler_for(choice.device) is not None)
    assert choice.description.startswith("gencycle: ") and "\n" not in choice.description
    assert f"{choice.dtype} weights" in choice.description
    assert ("compiled decoding" if choice.compile else "eager decoding") in choice.description
    assert "--dtype" in choice.description and "--no-compile" in choice.description  # how to override
    assert choice.load_arguments() == {"device": choice.device, "dtype": choice.dtype, "compile": choice.compile}


def test_a_cpu_with_native_bf16_gets_bf16_and_one_without_gets_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": True)
    monkeypatch.setattr(defaults, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "avx512_bf16"}))
    choice = inference_defaults()
    assert (choice.device, choice.dtype) == ("cpu", "bf16")
    assert "bf16 weights (AMX-BF16, AVX512-BF16 here)" in choice.description
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": False)
    choice = inference_defaults()
    assert choice.dtype == "fp32" and "fp32 weights (no native bf16 matrix products here)" in choice.description


def test_a_gpu_is_picked_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": torch.device(device).type == "cuda")
    monkeypatch.setattr(defaults, "compiler_for", lambda device: "Triton")
    choice = inference_defaults()
    assert (choice.device, choice.dtype, choice.compile) == ("cuda", "bf16", True)
    assert choice.description.startswith("gencycle: cuda (a GPU is there), bf16 weights (CUDA bf16 here)")


def test_what_is_given_is_kept_and_said_so():
    choice = inference_defaults(device="cpu", dtype="fp32", compile=False)
    assert (choice.device, choice.dtype, choice.compile) == ("cpu", "fp32", False)
    assert choice.description.startswith("gencycle: cpu (as asked), fp32 weights (as asked), eager decoding (as asked)")
    assert inference_defaults(compile=True).compile
    quantized = inference_defaults(quantize="int4")
    assert quantized.dtype == "fp32" and "int4 layers with fp32 around them" in quantized.description
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16, fp16, got 'float32'"):
        inference_defaults(dtype="float32")


def test_no_compiler_means_eager_decoding(monkeypatch):
    monkeypatch.setattr(defaults.shutil, "which", lambda name: None)
    choice = inference_defaults(device="cpu")
    assert not choice.compile and "eager decoding (torch.compile has no C++ compiler here)" in choice.description


def tiny(dtype) -> gencycle.Transformer:
    torch.manual_seed(0)
    config = gencycle.preset("tiny-llama", vocab_size=96, max_position_embeddings=64)
    model = gencycle.Transformer(config)
    with torch.no_grad():  # peaked next-token distributions, as in test_compiled_decoding
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model.to(dtype).eval()


@pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("native_bf16,quantize", [  # fp32 and int4 are also in test_compiled_decoding.py
    (True, None), pytest.param(False, None, marks=pytest.mark.slow), pytest.param(True, "int4", marks=pytest.mark.slow)])
def test_compiled_decoding_equals_eager_for_every_default(monkeypatch, native_bf16, quantize):
    """Each precision the defaults can choose, compiled as they choose it, gives eager's greedy tokens."""
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": native_bf16)
    choice = inference_defaults(device="cpu", quantize=quantize)
    assert choice.compile and choice.dtype == ("bf16" if native_bf16 and quantize is None else "fp32")
    model = tiny({"bf16": torch.bfloat16, "fp32": torch.float32}[choice.dtype])
    if quantize:
        quantize_model(model, quantize)
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        eager = gencycle.generate(model, ids, max_new_tokens=8, min_new_tokens=8)
        gencycle.compile_decoding(model)
        compiled = gencycle.generate(model, ids, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(compiled, eager)
