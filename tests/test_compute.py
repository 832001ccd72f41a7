"""gencycle.compute against the model's own parameter count and against published figures."""

from __future__ import annotations

import json

import pytest
import torch

from gencycle import compute
from gencycle.checkpoints import bert, gpt2, llama, t5
from gencycle.cli import main
from gencycle.cli.estimate import resolve_config
from gencycle.model.config import PRESETS, ModelConfig, preset
from gencycle.model.transformer import Transformer

GB, MiB = 1e9, 2 ** 20


def built_count(config: ModelConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return Transformer(config).num_parameters()


def close(value: float, published: float, tolerance: float = 0.02) -> bool:
    return abs(value - published) <= tolerance * abs(published)


# Shapes from the papers; none is instantiated except on the meta device.
LLAMA2_7B = ModelConfig(family="llama", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                        intermediate_size=11008, max_position_embeddings=4096, position="rope", norm="rmsnorm",
                        activation="silu", gated_mlp=True, norm_bias=False, tie_embeddings=False)
GPT3_175B = preset("gpt2-124m", num_layers=96, hidden_size=12288, num_heads=96, intermediate_size=4 * 12288,
                   max_position_embeddings=2048)

# Every family's converter, from Hugging Face config dicts with small sizes.
HF_CONFIGS = {
    "gpt2-untied": (gpt2, dict(vocab_size=101, n_embd=48, n_layer=2, n_head=4, n_positions=64, tie_word_embeddings=False)),
    "llama-gqa-tied": (llama, dict(model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                   tie_word_embeddings=True)),
    "llama-biases": (llama, dict(model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, attention_bias=True, mlp_bias=True)),
    "qwen2": (llama, dict(model_type="qwen2", vocab_size=97, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)),
    "bert-model": (bert, dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=37, max_position_embeddings=40)),
    "bert-mlm": (bert, dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, architectures=["BertForMaskedLM"])),
    "bert-pretraining-untied": (bert, dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=37, architectures=["BertForPreTraining"],
                                           tie_word_embeddings=False)),
    "t5-v1.0": (t5, dict(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
                         num_heads=4, feed_forward_proj="relu")),
    "t5-v1.1": (t5, dict(vocab_size=99, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=4,
                         feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}


# ---------------------------------------------------------------- exact parameter counts
@pytest.mark.parametrize("name", PRESETS)
def test_parameter_count_equals_the_model_for_every_preset(name):
    config = preset(name)
    assert compute.num_parameters(config) == built_count(config)


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_parameter_count_equals_the_model_for_every_family(name):
    family, hf = HF_CONFIGS[name]
    config = family.config_from_hf(hf)
    assert compute.num_parameters(config) == built_count(config)


def test_parameter_count_of_smollm2_from_its_gguf_metadata():
    pytest.importorskip("gguf")
    try:
        config = resolve_config("smollm2-135m-instruct")
    except FileNotFoundError:
        pytest.skip("the packaged SmolLM2 model is not installed")
    assert compute.num_parameters(config) == built_count(config) == 134_515_008
    assert compute.num_parameters(config) == compute.num_parameters(preset("smollm2-135m"))


def test_llama2_7b_parameters_and_kv_cache():
    n = compute.num_parameters(LLAMA2_7B)
    assert n == built_count(LLAMA2_7B) == 6_738_415_616       # the released checkpoint's count
    per_token = compute.kv_cache_bytes(LLAMA2_7B, dtype="fp16")
    assert close(per_token, 0.5 * MiB) and per_token == 0.5 * MiB
    assert compute.kv_cache_bytes(LLAMA2_7B, tokens=4096, batch=8, dtype="fp16") == 8 * 4096 * 0.5 * MiB


def test_kv_cache_by_architecture():
    gqa = preset("smollm2-135m")  # 30 layers x 3 kv heads x 64 dims x (k, v) x 2 bytes
    assert compute.kv_cache_bytes(gqa) == 30 * 3 * 64 * 2 * 2
    encoder = bert.config_from_hf(HF_CONFIGS["bert-model"][1])
    assert compute.kv_cache_bytes(encoder) == 0
    t5_config = t5.config_from_hf(HF_CONFIGS["t5-v1.0"][1])  # self + cross keys and values
    assert compute.kv_cache_bytes(t5_config, dtype="fp32") == 3 * 2 * 2 * 4 * 8 * 4


# ---------------------------------------------------------------- published figures
def test_gpt3_175b_training_compute():
    n = compute.num_parameters(GPT3_175B)
    assert close(n, 175e9)
    flops = compute.training_flops(GPT3_175B, tokens=300e9, seq=2048)
    assert close(flops["dense"], 3.14e23)                      # Brown et al. 2020, table D.1
    assert close(compute.pf_days(flops["dense"]), 3640)
    assert flops["attention"] == 12 * 96 * 96 * 128 * 2048 * 300e9   # PaLM's 12 L H Q T per token
    assert 0.02 < flops["attention"] / flops["dense"] < 0.03


def test_training_time_at_peak_and_utilisation():
    seconds = compute.training_seconds(3.14e23, devices=1024, peak_tflops=312, mfu=0.5)
    assert seconds == pytest.approx(3.14e23 / (1024 * 312e12 * 0.5))


@pytest.mark.parametrize("sharding, published_gb", [("none", 120), ("zero1", 31.4), ("zero2", 16.6),
                                                    ("zero3", 1.9), ("fsdp", 1.9)])
def test_zero_paper_model_states_of_7_5b_on_64_devices(sharding, published_gb):
    states = compute.model_state_bytes(7.5e9, devices=64, sharding=sharding, dtype="fp16")
    assert close(states["total"] / GB, published_gb)           # Rajbhandari et al. 2020, figure 1 / table 1


def test_model_states_in_fp32_have_no_master_copy():
    states = compute.model_state_bytes(1000, dtype="fp32")
    assert states == {"weights": 4000, "gradients": 4000, "adam_moments": 8000, "master_weights": 0, "total": 16000}


def test_chinchilla_20_tokens_per_parameter_gives_70b_on_1_4t():
    budget = 6 * 70e9 * 1.4e12
    rule = compute.compute_optimal(budget)["tokens_per_parameter_20"]
    assert close(rule["params"], 70e9) and close(rule["tokens"], 1.4e12)


def test_chinchilla_approach_3_is_the_minimum_of_its_fit():
    k = compute.CHINCHILLA
    assert close(k["beta"] / (k["alpha"] + k["beta"]), 0.46) and close(k["alpha"] / (k["alpha"] + k["beta"]), 0.54)
    budget = 5.76e23                                           # Gopher's budget, as the paper gives it
    best = compute.compute_optimal(budget)["approach_3"]
    assert 6 * best["params"] * best["tokens"] == pytest.approx(budget)
    for factor in (0.8, 0.95, 1.05, 1.25):                     # any other split on C = 6ND loses
        n = best["params"] * factor
        assert compute.chinchilla_loss(n, budget / (6 * n)) > best["loss"]
    assert best["loss"] == pytest.approx(1.69 + 406.4 / best["params"] ** 0.34 + 410.7 / best["tokens"] ** 0.28)


def test_activation_memory_follows_korthikanti():
    s, b, h, a, L, V = 2048, 1, 12288, 96, 96, 50257
    output = 4 * s * b * h + 4 * s * b * V
    act = {r: compute.activation_bytes(GPT3_175B, b, s, r) for r in compute.RECOMPUTATION}
    assert act["none"] == L * s * b * h * (34 + 5 * a * s / h) + output
    assert act["selective"] == L * 34 * s * b * h + output
    assert act["full"] == L * 2 * s * b * h + output
    memory = compute.training_memory(GPT3_175B, batch=1, seq=s, devices=64, sharding="zero3")
    assert memory["total"]["full"] == memory["model_states"]["total"] + act["full"]


# ---------------------------------------------------------------- bad input
def test_hidden_size_not_divisible_by_heads_is_an_error():
    with pytest.raises(ValueError, match="hidden_size 100 is not divisible by num_heads 12"):
        compute.num_parameters(ModelConfig(hidden_size=100, num_heads=12))
    t5_11b = t5.config_from_hf(dict(vocab_size=99, d_model=1024, d_kv=128, d_ff=64, num_layers=1, num_heads=128))
    assert compute.num_parameters(t5_11b) == built_count(t5_11b)  # an explicit head_dim is fine


@pytest.mark.parametrize("changes, message", [(dict(tokens=0), "tokens must be positive"),
                                              (dict(devices=-2), "devices must be positive"),
                                              (dict(sharding="zero4"), "unknown sharding 'zero4'"),
                                              (dict(dtype="int8"), "training dtype must be one of"),
                                              (dict(mfu=1.5), "mfu is a fraction")])
def test_bad_estimate_arguments(changes, message):
    with pytest.raises(ValueError, match=message):
        compute.estimate(preset("tiny-llama"), **changes)


@pytest.mark.parametrize("argv, message", [(["--tokens", "0"], "argument --tokens: must be positive, got 0"),
                                           (["--devices", "0"], "argument --devices: must be positive, got 0"),
                                           (["--sharding", "zero9"], "unknown sharding 'zero9'")])
def test_cli_bad_input_is_a_clear_error(capsys, argv, message):
    assert main(["estimate", "tiny-llama", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_model_names_presets_too(capsys):
    assert main(["estimate", "no-such-model"]) == 2
    assert "nor a preset (" in capsys.readouterr().err


# ---------------------------------------------------------------- the command
def test_cli_table_has_every_section(capsys):
    assert main(["estimate", "gpt2-124m", "--tokens", "3e9", "--batch", "4", "--seq", "512",
                 "--devices", "8", "--sharding", "zero3"]) == 0
    out = capsys.readouterr().out
    for section in ("parameters of gpt2-124m", "inference memory", "training memory per device",
                    "FLOPs & time", "compute-optimal"):
        assert section in out
    assert "124,439,808" in out and "3,000,000,000" in out


def test_cli_json_from_a_config_file_and_a_model_folder(tmp_path, capsys):
    config = preset("tiny-llama")
    config.save(tmp_path / "gencycle.json")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llama.config_to_hf(config)))
    reports = []
    for source in (tmp_path / "gencycle.json", folder):
        assert main(["estimate", str(source), "--json", "--tokens", "1000000"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    for report in reports:
        assert report["parameters"]["total"] == built_count(config)
        assert report["flops"]["tokens"] == 1_000_000
        assert set(report["training"]["activations"]) == {"none", "selective", "full"}
        assert report["compute_optimal"]["budget"] == report["flops"]["dense"]


def test_published_shapes_by_name(capsys):
    shapes = compute.published_shapes()
    assert compute.num_parameters(shapes["llama2-7b"]) == built_count(shapes["llama2-7b"]) == 6_738_415_616
    assert compute.num_parameters(shapes["gpt3-175b"]) == compute.num_parameters(GPT3_175B)
    assert main(["estimate", "llama2-7b", "--dtype", "fp16", "--tokens", "2e12", "--seq", "4096"]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "KV cache per token (fp16)             512.00 KiB" in out
    assert main(["estimate", "no-such-model"]) == 2
    assert "llama2-7b, gpt3-175b" in capsys.readouterr().err
