"""Greedy and beam search against `transformers.generate`, token for token.

Tiny random models of each decoder family and of T5 are built here, saved in the HF layout and
loaded through gencycle's converter. The prompts are a padded batch of ragged lengths (left
padding for decoders); two EOS ids are picked among tokens the model really generates, so rows
finish at different steps.
"""

import pytest
import torch
import transformers as hf

import gencycle

V, PAD = 96, 0
NEW = 12
FAMILIES = ["gpt2", "llama", "qwen2", "t5"]
PROCESSORS = [{}, {"repetition_penalty": 1.5}, {"no_repeat_ngram_size": 2},
              {"repetition_penalty": 0.8, "no_repeat_ngram_size": 3, "min_new_tokens": 4}]
BEAMS = [{"num_beams": 3}, {"num_beams": 3, "repetition_penalty": 1.5}, {"num_beams": 3, "no_repeat_ngram_size": 2},
         {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.5},
         {"num_beams": 2, "early_stopping": True, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
         {"num_beams": 3, "early_stopping": "never", "length_penalty": 1.5, "min_new_tokens": 3}]


def _tiny(name):
    if name == "gpt2":
        return hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                bos_token_id=1, eos_token_id=1))
    if name == "llama":  # grouped-query attention: 6 query heads share 2 key/value heads
        return hf.LlamaForCausalLM(hf.LlamaConfig(
            vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            intermediate_size=80, max_position_embeddings=64, rope_theta=500.0))
    if name == "qwen2":
        return hf.Qwen2ForCausalLM(hf.Qwen2Config(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True))
    return hf.T5ForConditionalGeneration(hf.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=20, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=1))


def _prompts(name):
    """A batch of 4 ragged prompts (B, 9) with its mask: left-padded for decoders, right-padded for T5."""
    g = torch.Generator().manual_seed(3)
    ids, mask = torch.randint(3, V, (4, 9), generator=g), torch.ones(4, 9, dtype=torch.long)
    for row, length in enumerate([9, 6, 3, 7]):
        pad = slice(length, None) if name == "t5" else slice(0, 9 - length)
        ids[row, pad], mask[row, pad] = PAD, 0
    return ids, mask


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (HF reference, gencycle model, eos ids): built once per module."""
    out = {}
    for name in FAMILIES:
        torch.manual_seed(0)
        ref = _tiny(name)
        with torch.no_grad():  # larger weights: peakier, more varied next-token distributions
            for param in ref.parameters():
                param.add_(torch.randn_like(param) * 0.3)
        ref.eval()
        folder = tmp_path_factory.mktemp(name)
        ref.save_pretrained(folder)
        ours = gencycle.load_model(folder, device="cpu")
        ids, mask = _prompts(name)
        free = gencycle.generate(ours, ids, mask, max_new_tokens=NEW, eos_token_id=[],
                                 no_repeat_ngram_size=1)  # varied, no EOS
        start = free.shape[1] - NEW
        eos = sorted({int(free[0, start + 2]), int(free[2, start + 5])})
        out[name] = ref, ours, eos
    return out


def _without_filler(out, start, eos):
    """Mark what follows each row's first EOS as filler (-1): transformers fills it with pad_token_id,
    or with the EOS id in beam search when pad_token_id is 0; gencycle always uses pad_token_id."""
    out = out.clone()
    for row in out:
        hits = torch.isin(row[start:], torch.tensor(eos)).nonzero()
        if len(hits):
            row[start + int(hits[0]) + 1:] = -1
    return out


def _compare(pairs, name, **kwargs):
    ref, ours, eos = pairs[name]
    ids, mask = _prompts(name)
    expected = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                            pad_token_id=PAD, eos_token_id=eos, **kwargs)
    got = gencycle.generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, **kwargs)
    assert got.shape == expected.shape
    start = 1 if name == "t5" else ids.shape[1]
    torch.testing.assert_close(_without_filler(got, start, eos), _without_filler(expected, start, eos), rtol=0, atol=0)
    return got


@pytest.mark.parametrize("processors", PROCESSORS, ids=lambda p: ",".join(p) or "plain")
@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_matches_transformers(pairs, name, processors):
    got = _compare(pairs, name, **processors)
    start = 1 if name == "t5" else 9
    ends = set(_without_filler(got, start, pairs[name][2]).ne(-1).sum(1).tolist())  # generated length per row
    if not processors:
        assert len(ends) > 1  # rows do end at different steps


@pytest.mark.parametrize("beams", BEAMS, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items()))
@pytest.mark.parametrize("name", FAMILIES)
def test_beam_search_matches_transformers(pairs, name, beams):
    _compare(pairs, name, **beams)


def test_finished_rows_leave_the_batch(pairs):
    """Each forward pass runs only the rows still generating."""
    _, ours, eos = pairs["llama"]
    ids, mask = _prompts("llama")
    sizes = []
    hook = ours.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(
        (args[0] if args else kwargs["decoder_input_ids"]).shape[0]), with_kwargs=True)
    try:
        out = gencycle.generate(ours, ids, mask, max_new_tokens=NEW, eos_token_id=eos)
    finally:
        hook.remove()
    running = [int((~torch.isin(out[:, 9:9 + s], torch.tensor(eos)).any(1)).sum()) for s in range(len(sizes))]
    assert sizes == running and sizes[-1] < sizes[0]


def test_output_layout_and_eos_lists(pairs):
    _, ours, eos = pairs["gpt2"]
    ids, mask = _prompts("gpt2")
    out = gencycle.generate(ours, ids, mask, max_new_tokens=5, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(out[:, :9], ids) and out.shape[1] <= 14
    assert gencycle.generate(ours, ids[0], max_new_tokens=0).shape == (1, 9)
    t5 = pairs["t5"][1]
    out = gencycle.generate(t5, *_prompts("t5"), max_new_tokens=4, eos_token_id=[])
    assert out.shape == (4, 5) and (out[:, 0] == PAD).all()  # decoder_start_token_id first


def test_bad_inputs_are_named(pairs):
    ours = pairs["gpt2"][1]
    ids, mask = _prompts("t5")  # right padding
    with pytest.raises(ValueError, match="left padding"):
        gencycle.generate(ours, ids, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="context window of 64 tokens"):
        gencycle.generate(ours, torch.ones(1, 65, dtype=torch.long), max_new_tokens=2)
    assert gencycle.generate(ours, torch.ones(1, 60, dtype=torch.long), max_new_tokens=10).shape == (1, 64)
    with pytest.raises(ValueError, match="non-empty"):
        gencycle.generate(ours, torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown generation parameter.*temprature"):
        gencycle.generate(ours, ids, temprature=0.5)
    with pytest.raises(ValueError, match="need a tokenizer"):
        gencycle.generate(ours, ids[:, :1], stop=["x"])
