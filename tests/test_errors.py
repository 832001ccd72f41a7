"""Bad input gets an error that names the problem (issue 2, point 7)."""

import json

import pytest
import torch
import transformers as hf
from safetensors.torch import load_file, save_file

import gencycle
from gencycle.cli import main as cli


@pytest.fixture
def llama_folder(tmp_path):
    model = hf.LlamaForCausalLM(hf.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, intermediate_size=64,
                                               max_position_embeddings=16))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_unknown_architecture_lists_the_supported_ones(llama_folder):
    config = json.loads((llama_folder / "config.json").read_text())
    config["model_type"] = "mamba"
    (llama_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture 'mamba'.*bert.*gpt2.*llama.*t5"):
        gencycle.load_model(llama_folder)


@pytest.mark.parametrize("edit", [
    {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},  # transformers 5
    {"rope_scaling": {"type": "dynamic", "factor": 2.0}},                                # transformers 4
    {"partial_rotary_factor": 0.5},
], ids=["rope_parameters", "rope_scaling", "partial_rotary"])
def test_unsupported_config_is_refused_before_weights_are_read(llama_folder, monkeypatch, edit):
    from gencycle import checkpoints

    config = json.loads((llama_folder / "config.json").read_text())
    (llama_folder / "config.json").write_text(json.dumps({**config, **edit}))

    def refuse(folder):
        raise AssertionError("weights were read before the config was refused")

    monkeypatch.setattr(checkpoints, "read_weights", refuse)
    with pytest.raises(ValueError, match="RoPE scaling '(linear|dynamic)' is not supported|partial_rotary_factor=0.5"):
        gencycle.load_model(llama_folder)


def test_missing_weights_file_is_named(llama_folder):
    (llama_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file.*model.safetensors.*pytorch_model.bin"):
        gencycle.load_model(llama_folder)


def test_missing_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        gencycle.load_model(tmp_path)


def test_missing_path_or_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at .*smollm2-135m-instruct"):
        gencycle.load_model(tmp_path / "nowhere")


def test_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        gencycle.load_tokenizer(tmp_path)


def test_missing_weight_is_named(llama_folder):
    state = load_file(llama_folder / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    save_file(state, llama_folder / "model.safetensors")
    with pytest.raises(ValueError, match="missing 1 weight.*model.layers.0.mlp.up_proj.weight"):
        gencycle.load_model(llama_folder)


def test_wrong_shape_names_the_tensor_and_both_shapes(llama_folder):
    state = load_file(llama_folder / "model.safetensors")
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(16, 32)
    save_file(state, llama_folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj.weight' has shape \(16, 32\).*expects \(32, 32\)"):
        gencycle.load_model(llama_folder)


def test_truncated_safetensors(llama_folder):
    path = llama_folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated safetensors file .*model.safetensors"):
        gencycle.load_model(llama_folder)


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(ValueError, match="broken.gguf"):
        gencycle.load_model(path)


def test_input_longer_than_context_window(llama_folder):
    model = gencycle.load_model(llama_folder)
    with pytest.raises(ValueError, match="input of 17 tokens is longer than the model's context window of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_cache(1, 32)
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="20 tokens .* context window of 16"):
        model(torch.zeros(1, 10, dtype=torch.long), cache=cache)


def test_unknown_family_and_preset():
    with pytest.raises(ValueError, match="unknown family 'mamba'; supported: gpt2, llama"):
        gencycle.ModelConfig(family="mamba")
    with pytest.raises(ValueError, match="unknown preset"):
        gencycle.preset("nope")


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert cli(["info", str(tmp_path / "nowhere")]) == 2
    assert "gencycle info: error: no model at" in capsys.readouterr().err
