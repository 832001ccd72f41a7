"""GenerationConfig: every invalid field is refused with a message naming it and the allowed range."""

import json
import math

import pytest

from gencycle import GenerationConfig

INVALID = [
    ("max_new_tokens", -1, r"max_new_tokens must be an integer >= 0, got -1"),
    ("max_new_tokens", 2.5, r"max_new_tokens must be an integer >= 0, got 2.5"),
    ("min_new_tokens", -3, r"min_new_tokens must be an integer >= 0, got -3"),
    ("do_sample", "yes", r"do_sample must be True or False, got 'yes'"),
    ("temperature", -0.1, r"temperature must be a number >= 0 \(0 means greedy\), got -0.1"),
    ("temperature", math.nan, r"temperature must be a number >= 0"),
    ("temperature", "hot", r"temperature must be a number >= 0"),
    ("top_k", -1, r"top_k must be an integer >= 0, got -1"),
    ("top_k", 2.0, r"top_k must be an integer >= 0, got 2.0"),
    ("top_p", 0.0, r"top_p must be a number in \(0, 1\], got 0.0"),
    ("top_p", 1.5, r"top_p must be a number in \(0, 1\], got 1.5"),
    ("repetition_penalty", 0.0, r"repetition_penalty must be a number > 0 \(1.0 = off\), got 0.0"),
    ("no_repeat_ngram_size", -2, r"no_repeat_ngram_size must be an integer >= 0, got -2"),
    ("num_beams", 0, r"num_beams must be an integer >= 1, got 0"),
    ("length_penalty", math.inf, r"length_penalty must be a number \(finite\), got inf"),
    ("early_stopping", "sometimes", r"early_stopping must be True, False or 'never', got 'sometimes'"),
    ("num_return_sequences", 0, r"num_return_sequences must be an integer >= 1, got 0"),
    ("stop", "", r"stop must be a non-empty string or a list of non-empty strings"),
    ("stop", ["ok", 3], r"stop must be a non-empty string or a list of non-empty strings"),
    ("eos_token_id", -1, r"eos_token_id must be an integer >= 0, got -1"),
    ("eos_token_id", [2, "x"], r"eos_token_id must be an integer >= 0, got 'x'"),
    ("pad_token_id", -1, r"pad_token_id must be an integer >= 0, got -1"),
    ("seed", "42", r"seed must be an integer or None, got '42'"),
]


@pytest.mark.parametrize("field, value, message", INVALID, ids=[f"{f}={v!r}" for f, v, _ in INVALID])
def test_invalid_field_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**{field: value})
    with pytest.raises(ValueError, match=message):  # replace() validates too
        GenerationConfig().replace(**{field: value})


def test_invalid_combinations_are_explained():
    with pytest.raises(ValueError, match=r"num_return_sequences must be 1 for greedy decoding"):
        GenerationConfig(num_return_sequences=2)
    with pytest.raises(ValueError, match=r"num_return_sequences must be in \[1, num_beams=3\] for beam search"):
        GenerationConfig(num_beams=3, num_return_sequences=4)
    with pytest.raises(ValueError, match=r"beam sampling\) is not supported"):
        GenerationConfig(num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match=r"unknown generation parameter\(s\) topp; known: max_new_tokens"):
        GenerationConfig().replace(topp=0.5)


def test_valid_values_are_normalised():
    config = GenerationConfig(stop="###", eos_token_id=2, temperature=0, do_sample=True, top_p=1, seed=3)
    assert config.stop == ("###",) and config.eos_token_id == (2,) and config.greedy
    assert GenerationConfig(eos_token_id=[1, 2]).eos_token_ids == [1, 2]
    assert GenerationConfig(do_sample=True, num_return_sequences=4).num_return_sequences == 4
    with pytest.raises(Exception):
        config.temperature = 1.0  # frozen: change values with replace()


def test_generation_config_json_round_trip_and_tolerance(tmp_path):
    config = GenerationConfig(max_new_tokens=9, do_sample=True, top_p=0.8, stop=["\n\n"], eos_token_id=[1, 2])
    config.save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path) == config
    # a file written by transformers: extra keys ignored, None means unset, stop_strings understood
    (tmp_path / "generation_config.json").write_text(json.dumps({
        "_from_model_config": True, "transformers_version": "4.46.0", "bos_token_id": 1, "eos_token_id": 2,
        "max_length": 20, "temperature": None, "top_k": 50, "do_sample": True, "stop_strings": ["END"]}))
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert (loaded.top_k, loaded.do_sample, loaded.eos_token_id, loaded.stop, loaded.temperature) == \
        (50, True, (2,), ("END",), 1.0)
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": 2}))
    with pytest.raises(ValueError, match=r"generation_config.json: top_p must be a number in \(0, 1\], got 2"):
        GenerationConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no generation_config.json"):
        GenerationConfig.from_pretrained(tmp_path / "missing")
