"""GGUF (llama.cpp) import: parity with transformers' own GGUF loader on a tiny file written here."""

from __future__ import annotations

import os
import time

import gguf
import numpy as np
import pytest
import torch

from gencycle.checkpoints import gguf as gg

Q = gguf.GGMLQuantizationType
HIDDEN, N_HEAD, N_KV, HEAD_DIM, FF, N_LAYERS, CTX = 64, 4, 2, 16, 128, 2, 256

# Tensor types of the tiny file: every supported type appears at least once.
TYPES = {
    "model.embed_tokens.weight": Q.Q8_0,
    "lm_head.weight": Q.Q8_0,
    "model.layers.0.self_attn.q_proj.weight": Q.F32,
    "model.layers.0.self_attn.k_proj.weight": Q.F32,
    "model.layers.1.self_attn.q_proj.weight": Q.Q8_0,
    "model.layers.1.self_attn.k_proj.weight": Q.Q4_0,
    "model.layers.1.self_attn.v_proj.weight": Q.Q4_1,
    "model.layers.1.self_attn.o_proj.weight": Q.F16,
    "model.layers.1.mlp.gate_proj.weight": Q.Q8_0,
    "model.layers.1.mlp.down_proj.weight": Q.Q8_0,
}
GGUF_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def _vocab():
    """A small GPT-2 style byte-level vocabulary with merges (the metadata transformers' GGUF loader reads)."""
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()") + ["Ġ", "Ċ"]
    merges = ["t h", "h e", "th e", "Ġ t", "Ġt he", "a n", "i n", "e r", "o n", "a t"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    tokens += [f"<extra_{i}>" for i in range(100 - len(tokens))]
    return tokens, merges


def _hf_gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


def _llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, copied as llama.cpp writes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _random_hf_weights(vocab: int, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (vocab, HIDDEN), "model.norm.weight": (HIDDEN,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, HIDDEN)
    for i in range(N_LAYERS):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (N_HEAD * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (N_KV * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (N_KV * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, N_HEAD * HEAD_DIM),
            p + "mlp.gate_proj.weight": (FF, HIDDEN), p + "mlp.up_proj.weight": (FF, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FF),
            p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
        })
    return {k: (g.standard_normal(s) * (0.1 if len(s) == 2 else 0.05) + (1.0 if len(s) == 1 else 0.0))
            .astype(np.float32) for k, s in shapes.items()}


def write_tiny_llama_gguf(path, tied: bool = True, arch: str = "llama", types=None, extra=None,
                          rope_dim=HEAD_DIM, metadata=None, drop=()):
    """Write a tiny llama GGUF the way llama.cpp's converter does; return the HF-layout originals.
    metadata(writer) adds keys; `drop` names HF tensors to leave out."""
    tokens, merges = _vocab()
    weights = {k: v for k, v in _random_hf_weights(len(tokens), tied).items() if k not in drop}
    types = TYPES if types is None else types
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(N_LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(rope_dim)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    if metadata is not None:
        metadata(w)
    for hf, arr in weights.items():
        data = arr
        if hf.endswith("q_proj.weight"):
            data = _llama_cpp_permute(arr, N_HEAD, N_HEAD)
        elif hf.endswith("k_proj.weight"):
            data = _llama_cpp_permute(arr, N_HEAD, N_KV)
        qtype = types.get(hf, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(_hf_gguf_name(hf), data)
        elif qtype == Q.F16:
            w.add_tensor(_hf_gguf_name(hf), data.astype(np.float16))
        elif qtype == Q.IQ4_NL:  # the gguf package cannot quantize i-quants: write raw (zero) blocks
            raw = np.zeros(gguf.quants.quant_shape_to_byte_shape(data.shape, qtype), dtype=np.uint8)
            w.add_tensor(_hf_gguf_name(hf), raw, raw_dtype=qtype)
        else:
            w.add_tensor(_hf_gguf_name(hf), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    for name, arr, qtype in extra or []:
        w.add_tensor(name, arr, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    out = {}
    for tied in (True, False):
        d = tmp_path_factory.mktemp("tied" if tied else "untied")
        originals = write_tiny_llama_gguf(d / "tiny.gguf", tied=tied)
        out[tied] = (d, originals)
    return out


def _transformers_gguf(folder, name="tiny.gguf"):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_matches_transformers_gguf_loader(tiny_files, tied):
    folder, _ = tiny_files[tied]
    config, sd = gg.read_gguf(folder / "tiny.gguf")
    ref = _transformers_gguf(folder)
    ref_sd = ref.state_dict()

    expected_keys = set(ref_sd) - ({"lm_head.weight"} if tied else set())
    assert set(sd) == expected_keys
    for k, v in sd.items():
        assert v.dtype == torch.float32 and v.is_contiguous()
        assert v.shape == ref_sd[k].shape, k
        assert torch.equal(v, ref_sd[k]), k

    rc = ref.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias"):
        assert config[key] == getattr(rc, key), key
    assert config["rms_norm_eps"] == pytest.approx(rc.rms_norm_eps, rel=1e-6)
    assert config["rope_theta"] == rc.rope_parameters["rope_theta"]
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is tied

    # The config dict builds a transformers LlamaForCausalLM that takes the state dict
    # strictly and computes what transformers' own GGUF import computes.
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    model.load_state_dict(sd, strict=not tied)
    if tied:
        model.tie_weights()
    ids = torch.tensor([[1, 5, 17, 42, 3, 99, 64]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def test_unpermutes_rope_and_dequantizes_within_quantization_error(tiny_files):
    folder, originals = tiny_files[False]
    _, sd = gg.read_gguf(folder / "tiny.gguf")
    for hf, orig in originals.items():
        got = sd[hf].numpy()
        assert got.shape == orig.shape, hf
        qtype = TYPES.get(hf, Q.F32)
        if qtype == Q.F32:  # exact, including the un-permuted q and k of layer 0
            np.testing.assert_array_equal(got, orig, err_msg=hf)
            continue
        if qtype == Q.F16:
            np.testing.assert_allclose(got, orig, rtol=1e-3, atol=1e-4, err_msg=hf)
            continue
        # per 32-value block: within one quantization step of the original
        blocks_o, blocks_g = orig.reshape(-1, 32), got.reshape(-1, 32)
        span = blocks_o.max(1) - blocks_o.min(1)
        step = {Q.Q8_0: np.abs(blocks_o).max(1) / 127, Q.Q4_0: np.abs(blocks_o).max(1) / 8, Q.Q4_1: span / 15}[qtype]
        err = np.abs(blocks_g - blocks_o).max(1)
        assert (err <= step * 1.01 + 1e-6).all(), hf
        if qtype == Q.Q8_0:
            assert (err <= step * 0.51 + np.abs(blocks_o).max(1) * 2e-3).all(), hf


def test_untied_has_lm_head_and_tied_has_none(tiny_files):
    config_t, sd_t = gg.read_gguf(tiny_files[True][0] / "tiny.gguf")
    config_u, sd_u = gg.read_gguf(tiny_files[False][0] / "tiny.gguf")
    assert config_t["tie_word_embeddings"] is True and "lm_head.weight" not in sd_t
    assert config_u["tie_word_embeddings"] is False and sd_u["lm_head.weight"].shape == (100, HIDDEN)
    assert sd_t["model.embed_tokens.weight"].shape == (100, HIDDEN)
    assert sd_t["model.layers.0.mlp.down_proj.weight"].shape == (HIDDEN, FF)  # ne order reversed


def test_cache_round_trip(tiny_files, tmp_path, monkeypatch):
    src = tiny_files[False][0] / "tiny.gguf"
    config, sd = gg.load_gguf_cached(src, cache_dir=tmp_path)
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    assert sorted(p.name for p in entries[0].iterdir()) == ["config.json", "model.safetensors"]

    def no_conversion(*a, **k):
        raise AssertionError("second load should come from the cache")

    monkeypatch.setattr(gg, "read_gguf", no_conversion)
    config2, sd2 = gg.load_gguf_cached(src, cache_dir=tmp_path)
    assert config2 == config
    assert set(sd2) == set(sd) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    monkeypatch.undo()

    # a changed file (new mtime) is converted again into a new entry
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    gg.load_gguf_cached(src, cache_dir=tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2

    # a damaged entry is rebuilt, not trusted
    entry = gg.cache_entry(src, tmp_path)
    (entry / "model.safetensors").write_bytes(b"not safetensors")
    _, sd3 = gg.load_gguf_cached(src, cache_dir=tmp_path)
    assert all(torch.equal(sd[k], sd3[k]) for k in sd)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GENCYCLE_CACHE", str(tmp_path))
    assert gg.default_cache_dir() == tmp_path / "gguf"


def test_truncated_file_is_a_clear_error(tiny_files, tmp_path):
    data = (tiny_files[False][0] / "tiny.gguf").read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 200, 10):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.gguf.*(truncated|corrupt)"):
            gg.read_gguf(bad)
        with pytest.raises(ValueError, match=f"cut{cut}.gguf"):
            gg.load_gguf_cached(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half-written


def test_garbage_and_empty_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="garbage.gguf.*not a GGUF file"):
        gg.read_gguf(garbage)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.gguf.*empty"):
        gg.read_gguf(empty)
    # right magic, garbage after it
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="corrupt.gguf"):
        gg.read_gguf(corrupt)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        gg.read_gguf(tmp_path / "missing.gguf")


def test_unsupported_architecture_lists_supported(tmp_path):
    path = tmp_path / "other.gguf"
    write_tiny_llama_gguf(path, arch="gpt2", types={})
    with pytest.raises(ValueError, match=r"other.gguf.*'gpt2'.*supported architectures: llama"):
        gg.read_gguf(path)


@pytest.fixture
def no_dequantize(monkeypatch):
    """Fail the test if any tensor of the file is dequantized."""
    def refuse(tensor):
        raise AssertionError(f"{tensor.name} was dequantized before the file was refused")

    monkeypatch.setattr(gg, "_dequantize", refuse)


def _rope_scaling(kind, factor):
    def add(w):
        w.add_rope_scaling_type(kind)
        w.add_rope_scaling_factor(factor)
    return add


REFUSED = {  # case -> (write_tiny_llama_gguf options, what the error says)
    "linear": (dict(metadata=_rope_scaling(gguf.RopeScalingType.LINEAR, 2.0)),
               "RoPE scaling 'linear' is not supported"),
    "yarn": (dict(metadata=_rope_scaling(gguf.RopeScalingType.YARN, 4.0)), "RoPE scaling 'yarn' is not supported"),
    "llama3": (dict(extra=[("rope_freqs.weight", np.ones(HEAD_DIM // 2, dtype=np.float32), None)]),
               "RoPE scaling 'llama3' is not supported"),
    "partial": (dict(rope_dim=HEAD_DIM // 2), r"partial_rotary_factor=0.5"),
    "moe": (dict(metadata=lambda w: w.add_expert_count(4)), "mixture-of-experts"),
    "tensor type": (dict(types={"model.layers.1.mlp.up_proj.weight": Q.IQ4_NL}), r"'blk.1.ffn_up.weight'.*IQ4_NL"),
    "tensor name": (dict(extra=[("blk.0.attn_sinks.weight", np.ones(N_HEAD, dtype=np.float32), None)]),
                    "unexpected tensor 'blk.0.attn_sinks.weight'"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_unsupported_features_are_refused_before_any_tensor_is_dequantized(tmp_path, no_dequantize, case):
    options, message = REFUSED[case]
    path = tmp_path / "refused.gguf"
    write_tiny_llama_gguf(path, **{"types": {}, **options})
    with pytest.raises(ValueError, match=f"refused.gguf.*{message}"):
        gg.read_gguf(path)


def test_config_alone_reads_no_tensor(tiny_files, no_dequantize):
    hf_config, config = gg.read_gguf_config(tiny_files[True][0] / "tiny.gguf")
    assert (config.family, config.num_layers, config.num_heads, config.num_kv_heads) == ("llama", N_LAYERS, N_HEAD, N_KV)
    assert config.tie_embeddings and hf_config["rope_theta"] == config.rope_theta == 100000.0


def test_load_model_refuses_rope_scaling_before_dequantizing_or_caching(tmp_path, monkeypatch, no_dequantize):
    import gencycle

    monkeypatch.setenv("GENCYCLE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "scaled.gguf"
    write_tiny_llama_gguf(path, metadata=_rope_scaling(gguf.RopeScalingType.LINEAR, 2.0))
    with pytest.raises(ValueError, match="scaled.gguf.*RoPE scaling 'linear' is not supported"):
        gencycle.load_model(path)
    cache = tmp_path / "cache" / "gguf"
    assert not cache.exists() or not any(cache.iterdir())  # nothing converted, nothing cached


def test_missing_tensor_is_named_by_load_model(tmp_path, monkeypatch):
    import gencycle

    monkeypatch.setenv("GENCYCLE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "holes.gguf"
    write_tiny_llama_gguf(path, types={}, drop={"model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match=r"missing 1 weight.*model\.layers\.1\.mlp\.up_proj\.weight"):
        gencycle.load_model(path, device="cpu")


def test_gguf_names_come_from_the_family_table():
    """llama.py's table, read in its GGUF column, names every tensor as llama.cpp's converter does."""
    from gencycle.checkpoints import llama
    from gencycle.checkpoints.names import GGUF, HF, OURS, translate

    for hf in _random_hf_weights(100, tied=False):
        gguf_name = translate(hf, llama.TABLE, HF, GGUF)
        assert gguf_name == _hf_gguf_name(hf), hf
        assert translate(gguf_name, llama.TABLE, GGUF, HF) == hf
        assert translate(gguf_name, llama.TABLE, GGUF, OURS) == translate(hf, llama.TABLE, HF, OURS)


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1, Q.BF16])
def test_more_quantization_types_dequantize(tmp_path, qtype):
    path = tmp_path / "more.gguf"
    original = write_tiny_llama_gguf(path, types={"model.layers.0.mlp.down_proj.weight": qtype})
    _, state = gg.read_gguf(path)
    name = "model.layers.0.mlp.down_proj.weight"
    error = (state[name] - torch.from_numpy(original[name])).abs().max()
    assert error < 0.02


# ----------------------------------------------------------------------------- real weights

@pytest.mark.slow
def test_real_smollm2_matches_transformers(tmp_path):
    from gencycle import assets

    try:
        path = assets.resolve("smollm2-135m-instruct")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    t0 = time.perf_counter()
    config, sd = gg.load_gguf_cached(path, cache_dir=tmp_path, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    config2, sd2 = gg.load_gguf_cached(path, cache_dir=tmp_path)
    cached = time.perf_counter() - t0
    print(f"\nSmolLM2 GGUF: convert {first:.1f} s, cached load {cached:.2f} s")
    assert cached < first and config2 == config

    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] == 8192 and config["rms_norm_eps"] == 1e-5
    assert "lm_head.weight" not in sd and len(sd) == 272

    ref = _transformers_gguf(path.parent, path.name).state_dict()
    for k in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.0.self_attn.k_proj.weight", "model.layers.7.self_attn.k_proj.weight",
              "model.layers.0.mlp.down_proj.weight", "model.layers.29.mlp.gate_proj.weight",
              "model.layers.3.input_layernorm.weight", "model.norm.weight"):
        assert torch.equal(sd[k], ref[k]), k
        assert torch.equal(sd2[k], ref[k]), k
