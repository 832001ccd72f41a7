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


# ---------------------------------------------------------------- issue 12: files a user gets wrong
@pytest.mark.parametrize("text, message", [
    ("[1, 2]", r"config.json: expected a JSON object \(\{...\}\), got a list"),
    ('{"model_type": "llama",', r"config.json: malformed JSON at line 1 column 24"),
    (None, r"config.json: no 'hidden_size' field, which a 'llama' config needs"),
], ids=["not-an-object", "malformed", "no-hidden-size"])
def test_bad_config_json_names_the_file(llama_folder, text, message, capsys):
    path = llama_folder / "config.json"
    if text is None:
        config = json.loads(path.read_text())
        del config["hidden_size"]
        text = json.dumps(config)
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        gencycle.load_model(llama_folder)
    assert str(path) in str(error.value)
    assert cli(["info", str(llama_folder)]) == 2
    assert f"gencycle info: error: {path}" in capsys.readouterr().err


@pytest.fixture
def tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, trainers
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                                          special_tokens=["<|end|>"]))
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    return tmp_path


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_broken_tokenizer_json_names_the_file(tokenizer_folder, damage):
    path = tokenizer_folder / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:200] if damage == "truncated" else b"\x00\x01 not json at all")
    with pytest.raises(ValueError, match="tokenizer.json: not a readable tokenizer.json") as error:
        gencycle.load_tokenizer(tokenizer_folder)
    assert str(path) in str(error.value)


def test_malformed_tokenizer_config_names_the_file(tokenizer_folder):
    (tokenizer_folder / "tokenizer_config.json").write_text('{"eos_token": ')
    with pytest.raises(ValueError, match=r"tokenizer_config.json: malformed JSON at line 1"):
        gencycle.load_tokenizer(tokenizer_folder)


def test_chat_template_errors_are_user_errors(tokenizer_folder):
    from gencycle.errors import UserError
    config = {"eos_token": "<|end|>", "chat_template": "{% for m in messages %}{{ m.content }\n{% endfor %}"}
    (tokenizer_folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = gencycle.load_tokenizer(tokenizer_folder)
    with pytest.raises(UserError, match=r"Jinja syntax error at line 1: unexpected '}' \(near '\{% for m in"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    tokenizer.chat_template = "{{ raise_exception('roles must alternate user/assistant') }}"
    with pytest.raises(UserError, match="the chat template refused this conversation: roles must alternate"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_text_that_was_not_utf8_is_refused_by_the_tokenizer(tokenizer_folder):
    from gencycle.errors import UserError
    tokenizer = gencycle.load_tokenizer(tokenizer_folder)
    with pytest.raises(UserError, match="not valid UTF-8: byte 0xff at character 6"):
        tokenizer.encode("hello \udcff")
    with pytest.raises(UserError, match="byte 0xfe"):
        tokenizer(["fine", "bad \udcfe"])


def test_a_file_given_as_a_model_is_named(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    with pytest.raises(ValueError, match="notes.txt' is a file, not a model folder nor a tokenizer file"):
        gencycle.load_tokenizer(notes)
    assert cli(["generate", str(notes), "hi"]) == 2
    assert "notes.txt' is a file" in capsys.readouterr().err


def test_devices_are_checked_by_name():
    from gencycle.checkpoints.devices import resolve_device
    from gencycle.errors import OptionError
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(OptionError, match="must be a device such as cpu, cuda"):
        resolve_device("gpu0")
    with pytest.raises(OptionError, match="'cuda:99' cannot be used"):
        resolve_device("cuda:99")


def test_the_cli_names_an_options_flag_and_keeps_tracebacks_for_bugs(capsys, monkeypatch):
    from gencycle.cli import finetune as finetune_cli

    def bug(args):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(finetune_cli, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli(["finetune", "m", "--data", "d"])
    monkeypatch.undo()
    assert cli(["finetune", "m", "--data", "d", "--lora-rank", "0"]) == 2
    assert "gencycle finetune: error: argument --lora-rank: LoRA rank must be a positive integer" \
        in capsys.readouterr().err
    monkeypatch.setenv("GENCYCLE_DEBUG", "1")
    with pytest.raises(ValueError, match="LoRA rank"):
        cli(["finetune", "m", "--data", "d", "--lora-rank", "0"])


@pytest.mark.parametrize("argv, message", [
    (["generate", "{model}", "hi", "--top-p", "2"], "argument --top-p: must be a number in (0, 1], got 2.0"),
    (["chat", "{model}", "--top-k=-1"], "argument --top-k: must be an integer >= 0, got -1"),
    (["generate", "{model}", "hi", "--repetition-penalty", "0"],
     "argument --repetition-penalty: must be a number > 0 (1.0 = off), got 0.0"),
    (["generate", "{model}", "hi", "--num-return-sequences", "2"],
     "argument --num-return-sequences: must be 1 for greedy decoding (got 2)"),
], ids=["top-p", "top-k", "repetition-penalty", "num-return-sequences"])
def test_generation_config_errors_name_the_flag_not_the_field(tmp_path, argv, message, capsys):
    """GenerationConfig words its checks with its field names ("top_p must be ..."); the CLI names the flag."""
    with pytest.raises(ValueError, match=r"^top_p must be a number in \(0, 1\]"):
        gencycle.GenerationConfig(top_p=2.0)
    from tiny_llm import save_tiny_chat_model
    model = save_tiny_chat_model(tmp_path / "model")  # with a tokenizer: some checks need the model's config
    assert cli([a.format(model=model) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "_" not in err.split("error: ")[1].split(":")[0], err


def test_a_field_name_that_is_no_flag_of_the_verb_is_left_as_it_is():
    import argparse
    from gencycle.cli import describe
    parser = argparse.ArgumentParser()
    parser.add_argument("--top-p", dest="top_p", type=float)
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction)
    assert describe(ValueError("top_p must be in (0, 1], got 2"), parser) == "argument --top-p: must be in (0, 1], got 2"
    assert describe(ValueError("min_p must be in [0, 1], got 2"), parser) == "min_p must be in [0, 1], got 2"
    assert describe(ValueError("the file is top_p must"), parser) == "the file is top_p must"  # only a leading name
    from gencycle.errors import OptionError
    assert describe(OptionError("lowercase", "needs wordpiece"), parser) == "argument --lowercase: needs wordpiece"
