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


def test_this_machine_gets_its_fastest_precision_and_decoding():
    for sampling in (False, True):
        choice = inference_defaults(sampling=sampling)
        assert choice.device == ("cuda" if torch.cuda.is_available() else "cpu")
        assert choice.dtype == ("bf16" if sampling and native_bf16_matmul(choice.device) else "fp32")
        assert choice.compile == (defaults.compiler_for(choice.device) is not None
                                  and (choice.device != "cpu" or choice.dtype == "bf16"))  # fp32 on a CPU: eager
        assert choice.description.startswith("gencycle: ") and "\n" not in choice.description
        assert f"{choice.dtype} weights" in choice.description
        assert ("compiled decoding" if choice.compile else "eager decoding") in choice.description
        assert "--dtype" in choice.description and "--no-compile" in choice.description  # how to override
        assert choice.load_arguments() == {"device": choice.device, "dtype": choice.dtype, "compile": choice.compile}


def test_bf16_only_when_sampling_on_a_cpu_with_native_bf16(monkeypatch):
    """Greedy decoding keeps fp32 (bf16 changes greedy tokens after near-ties) and says bf16 is there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": True)
    monkeypatch.setattr(defaults, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "avx512_bf16"}))
    choice = inference_defaults(sampling=True)
    assert (choice.device, choice.dtype) == ("cpu", "bf16")
    assert "bf16 weights (AMX-BF16, AVX512-BF16 here; sampling)" in choice.description
    greedy = inference_defaults()
    assert greedy.dtype == "fp32"
    assert "fp32 weights (greedy decoding keeps fp32's tokens; bf16 is native here (AMX-BF16, AVX512-BF16)" \
        in greedy.description and "--dtype bf16" in greedy.description
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": False)
    for sampling in (False, True):
        choice = inference_defaults(sampling=sampling)
        assert choice.dtype == "fp32" and "fp32 weights (no native bf16 matrix products here)" in choice.description


def test_a_gpu_is_picked_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": torch.device(device).type == "cuda")
    monkeypatch.setattr(defaults, "compiler_for", lambda device: "Triton")
    choice = inference_defaults(sampling=True)
    assert (choice.device, choice.dtype, choice.compile) == ("cuda", "bf16", True)
    assert choice.description.startswith("gencycle: cuda (a GPU is there), bf16 weights (CUDA bf16 here; sampling)")
    assert inference_defaults().dtype == "fp32"


def test_a_small_model_decodes_eagerly_unless_asked():
    small = defaults.MIN_COMPILED_ELEMENTS - 1
    large = inference_defaults(device="cpu", model_size=defaults.MIN_COMPILED_ELEMENTS)
    assert not large.compile  # fp32 on the CPU decodes eagerly: compiled steps measured no faster there
    if defaults.compiler_for("cpu") is not None:
        assert "eager decoding (compiled fp32 steps measured no faster" in large.description
        assert inference_defaults(device="cpu", dtype="bf16", model_size=defaults.MIN_COMPILED_ELEMENTS).compile
        assert not inference_defaults(device="cpu", dtype="bf16", model_size=small).compile
    choice = inference_defaults(device="cpu", model_size=small)
    assert not choice.compile
    if defaults.compiler_for("cpu") is not None:
        assert f"eager decoding (a model of {small:,} weights decodes faster than it compiles)" in choice.description
    assert inference_defaults(device="cpu", compile=True, model_size=small).compile  # asked: kept
    model = tiny(torch.float32)
    assert defaults.model_elements(model) == sum(p.numel() for p in model.parameters()) + \
        sum(b.numel() for b in model.buffers())
    quantize_model(model, "int8")  # int8 weights are buffers, and count
    assert defaults.model_elements(model) > sum(p.numel() for p in model.parameters())


def test_what_is_given_is_kept_and_said_so():
    choice = inference_defaults(device="cpu", dtype="fp32", compile=False)
    assert (choice.device, choice.dtype, choice.compile) == ("cpu", "fp32", False)
    assert choice.description.startswith("gencycle: cpu (as asked), fp32 weights (as asked), eager decoding (as asked)")
    assert inference_defaults(compile=True).compile
    quantized = inference_defaults(device="cpu", quantize="int4", compile=False)
    assert quantized.dtype == "fp32" and "int4 layers with fp32 around them" in quantized.description
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16, fp16, got 'float32'"):
        inference_defaults(dtype="float32")


@pytest.mark.parametrize("native", [True, False])
def test_quantized_models_compile_on_the_cpu_with_bf16_around_them_where_native(monkeypatch, native):
    """Compiled int8 / int4 steps decode as fast with bf16 around the quantized layers as with fp32, and
    the prompt runs at bf16 speed; eager steps are faster in fp32. A server decodes eagerly unless asked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(defaults, "compiler_for", lambda device: "g++")
    monkeypatch.setattr(defaults, "native_bf16_matmul", lambda device="cpu": native)
    monkeypatch.setattr(defaults, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    choice = inference_defaults(quantize="int4")
    assert choice.compile and choice.dtype == ("bf16" if native else "fp32")
    assert ("int4 layers with bf16 around them (AMX-BF16 here; compiled steps)" if native else
            "int4 layers with fp32 around them (no native bf16 matrix products here)") in choice.description
    assert "compiled decoding (torch.compile with g++, ahead of time" in choice.description
    eager = inference_defaults(quantize="int4", compile=False)
    assert (eager.dtype, eager.compile) == ("fp32", False)
    small = inference_defaults(quantize="int8", model_size=defaults.MIN_COMPILED_ELEMENTS - 1)
    assert (small.dtype, small.compile) == ("fp32", False)
    served = inference_defaults(quantize="int4", serving=True)
    assert (served.dtype, served.compile) == ("fp32", False)
    assert "eager decoding (a server's warm-up would build a compiled step per row count" in served.description
    assert inference_defaults(quantize="int4", serving=True, compile=True).dtype == ("bf16" if native else "fp32")


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
    choice = inference_defaults(device="cpu", quantize=quantize, sampling=True, compile=True)  # bf16 where native
    assert choice.compile and choice.dtype == ("bf16" if native_bf16 else "fp32")
    model = tiny({"bf16": torch.bfloat16, "fp32": torch.float32}[choice.dtype])
    if quantize:
        quantize_model(model, quantize)
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    gencycle.compile_decoding(model)  # fuses the projections: eager decodes the same layers
    step = model.__dict__.pop("compiled_decoding")
    with torch.inference_mode():
        eager = gencycle.generate(model, ids, max_new_tokens=8, min_new_tokens=8)
        model.compiled_decoding = step
        compiled = gencycle.generate(model, ids, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(compiled, eager)


def cli(args, capsys):
    from gencycle.cli import main
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_prints_its_defaults_and_keeps_fp32_greedy_tokens(tmp_path, capsys):
    """`gencycle generate` says in one stderr line what it chose; greedy text is fp32's (the tiny model
    decodes eagerly: it is below MIN_COMPILED_ELEMENTS); flags override each choice and are said so."""
    from tiny_llm import save_tiny_chat_model
    folder = save_tiny_chat_model(tmp_path / "chat")
    reference = gencycle.LLM.load(folder, dtype="fp32", device="cpu").chat([{"role": "user", "content": "hello"}],
                                                                          max_new_tokens=8)
    code, out, err = cli(["generate", str(folder), "hello", "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    assert out == reference + "\n"
    line = next(line for line in err.splitlines() if line.startswith("gencycle: "))
    assert "fp32 weights" in line and "eager decoding (a model of" in line and "--no-compile" in line
    code, out, err = cli(["generate", str(folder), "hello", "--max-new-tokens", "8", "--dtype", "bf16",
                          "--no-compile", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "gencycle: cpu (as asked), bf16 weights (as asked), eager decoding (as asked)" in err
    code, out, err = cli(["generate", str(folder), "hello", "--max-new-tokens", "8", "--do-sample", "--seed", "1",
                          "--no-compile"], capsys)
    assert code == 0, err
    assert ("bf16 weights" if native_bf16_matmul("cpu") and not torch.cuda.is_available() else "fp32 weights") in err


@pytest.mark.slow
@pytest.mark.skipif(not has_cpp_compiler(), reason="compiled decoding on CPU needs a C++ compiler")
def test_smollm2_generate_defaults_give_fp32_eager_greedy_text_on_shipped_prompts(capsys):
    """SmolLM2-135M through `gencycle generate` with nothing chosen (eager on the CPU, fp32 for
    greedy): the text equals eager fp32's on shipped test dialogues' first
    turns."""
    from gencycle.data.dialogsum import load_shipped
    eager = gencycle.LLM.load("smollm2-135m-instruct", dtype="fp32", device="cpu")
    prompts = [example.dialogue.splitlines()[0].split(": ", 1)[1] for example in load_shipped("test")[:3]]
    for prompt in prompts:
        code, out, err = cli(["generate", "smollm2-135m-instruct", prompt, "--max-new-tokens", "24"], capsys)
        assert code == 0, err
        assert "eager decoding" in err and "fp32 weights" in err
        assert out == eager.chat([{"role": "user", "content": prompt}], max_new_tokens=24) + "\n", prompt


def test_serve_fills_in_the_defaults_and_says_so(capsys):
    from gencycle.cli.serve import _with_inference_defaults
    from gencycle.serve.config import ServeConfig
    config = _with_inference_defaults(ServeConfig())
    choice = inference_defaults(serving=True)  # greedy: a server answers greedy requests too
    assert (config.device, config.dtype, config.compile) == (choice.device, "fp32", choice.compile)
    assert capsys.readouterr().err.strip() == choice.description
    for compile in (True, False):  # what was asked is kept, whatever the defaults would choose
        config = _with_inference_defaults(ServeConfig(dtype="bf16", compile=compile, device="cpu"))
        assert (config.device, config.dtype, config.compile) == ("cpu", "bf16", compile)
        err = capsys.readouterr().err
        assert "cpu (as asked), bf16 weights (as asked)" in err
        assert f"{'compiled' if compile else 'eager'} decoding (as asked)" in err
