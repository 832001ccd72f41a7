"""KVCache's per-row lengths: rows that join a running batch (continuous batching) decode the same
tokens as their prompt alone; the bookkeeping of advance / select / insert / extend."""

from __future__ import annotations

import pytest
import torch

import gencycle
from gencycle.generation import generate
from gencycle.model import KVCache, ModelConfig, Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

V, SLOTS = 64, 48


def tiny(position: str) -> Transformer:
    if position == "rope":
        config = gencycle.preset("tiny-llama", vocab_size=V, num_layers=2)
    else:  # GPT-2-like learned positions: a wrong position shows at once
        config = ModelConfig(family="gpt2", vocab_size=V, hidden_size=32, num_layers=2, num_heads=4,
                             intermediate_size=64, max_position_embeddings=64, qkv_bias=True)
    with torch.no_grad():
        model = Transformer(config).eval()
        for param in model.parameters():  # larger weights: confident, well-separated greedy choices
            param.mul_(8.0)
    return model


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (length,), generator=torch.Generator().manual_seed(seed))


def prefill(model, prompts: list[torch.Tensor]) -> tuple[KVCache, torch.Tensor]:
    """Its own cache for one or more new requests (left-padded together); first tokens (N,)."""
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):], mask[row, T - len(p):] = p, 1
    cache = model.new_cache(len(prompts), SLOTS)
    logits = model(ids, mask, cache=cache, logits_to_keep=1).logits[:, -1]
    return cache, logits.argmax(-1)


def step(model, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
    """One greedy step of the running batch, the attention mask derived from the per-row lengths."""
    logits = model(tokens[:, None], cache.attention_mask(new_tokens=1), cache=cache, logits_to_keep=1).logits
    return logits[:, -1].argmax(-1)


@pytest.mark.parametrize("position", ["rope", "learned"])
@torch.no_grad()
def test_rows_joining_a_running_batch_decode_like_their_prompt_alone(position):
    model = tiny(position)
    prompts = {"a": prompt(4, 1), "b": prompt(9, 2), "c": prompt(3, 3), "d": prompt(5, 4), "e": prompt(2, 5)}
    out = {name: [] for name in prompts}

    cache, tokens = prefill(model, [prompts["a"]])
    names = ["a"]
    for _ in range(2):
        out["a"].append(int(tokens[0]))
        tokens = step(model, cache, tokens)

    joined, first = prefill(model, [prompts["b"]])      # longer than the batch's 6 filled slots
    cache.extend(joined)
    names, tokens = names + ["b"], torch.cat([tokens, first])
    assert cache.lengths.tolist() == [6, 9]
    for _ in range(3):
        for name, token in zip(names, tokens.tolist()):
            out[name].append(token)
        tokens = step(model, cache, tokens)

    joined, first = prefill(model, [prompts["c"]])      # "a" is done: "c" takes its row
    cache.insert(torch.tensor([0]), joined)
    names[0], tokens = "c", torch.cat([first, tokens[1:]])
    for _ in range(2):
        for name, token in zip(names, tokens.tolist()):
            out[name].append(token)
        tokens = step(model, cache, tokens)

    keep = torch.tensor([0])                            # "b" leaves; "d" and "e" join, prefilled together
    cache.select(keep)
    cache.compact()                                     # drop the slots only "b" used
    assert cache.length == cache.lengths.item() == len(prompts["c"]) + 2
    names, tokens = ["c"], tokens[keep]
    joined, first = prefill(model, [prompts["d"], prompts["e"]])
    assert joined.lengths.tolist() == [5, 2]           # left padding is not counted
    cache.extend(joined)
    names, tokens = names + ["d", "e"], torch.cat([tokens, first])
    for _ in range(4):
        for name, token in zip(names, tokens.tolist()):
            out[name].append(token)
        tokens = step(model, cache, tokens)
    assert cache.lengths.tolist() == [len(prompts[n]) + len(out[n]) for n in names]  # every kept token was fed

    for name, tokens in out.items():
        alone = generate(model, prompts[name][None], max_new_tokens=len(tokens))[0, len(prompts[name]):]
        assert alone.tolist() == tokens, name


def test_lengths_through_advance_select_and_the_mask():
    cache = KVCache(num_layers=1, batch_size=3, num_kv_heads=1, head_dim=2, max_length=8)
    cache.update(0, torch.randn(3, 1, 4, 2), torch.randn(3, 1, 4, 2))
    cache.advance(4, torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]))
    assert cache.lengths.tolist() == [4, 2, 3]
    cache.advance(1)  # a step without a mask: the new position is valid in every row
    assert cache.lengths.tolist() == [5, 3, 4]
    assert cache.attention_mask(1).tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    cache.select(torch.tensor([2, 2, 1]))
    assert cache.lengths.tolist() == [4, 4, 3]
    cache.advance(1, torch.ones(3, 2))  # a mask that does not cover every slot tells nothing
    assert cache.lengths.tolist() == [5, 5, 4]


def test_a_model_forward_with_left_padding_sets_the_lengths():
    model = tiny("rope")
    ids, mask = torch.randint(0, V, (2, 5)), torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
    cache = model.new_cache(2, 8)
    with torch.no_grad():
        model(ids, mask, cache=cache)
        assert cache.lengths.tolist() == [5, 2]
        model(ids[:, :1], cache.attention_mask(1), cache=cache)
    assert cache.lengths.tolist() == [6, 3]


def test_insert_keeps_the_rows_already_there_and_checks_its_input():
    def filled(rows: int, length: int, value: float) -> KVCache:
        cache = KVCache(num_layers=2, batch_size=rows, num_kv_heads=1, head_dim=2, max_length=8)
        for layer in range(2):
            cache.update(layer, torch.full((rows, 1, length, 2), value), torch.full((rows, 1, length, 2), -value))
        cache.advance(length)
        return cache

    cache = filled(2, 3, 1.0)
    cache.insert(torch.tensor([1]), filled(1, 5, 2.0))  # moves the batch 2 slots right
    assert cache.length == 5 and cache.lengths.tolist() == [3, 5]
    assert torch.equal(cache.keys[:, 0, :, 2:5], torch.ones(2, 1, 3, 2))
    assert torch.equal(cache.keys[:, 0, :, :2], torch.zeros(2, 1, 2, 2))
    assert torch.equal(cache.values[:, 1, :, :5], torch.full((2, 1, 5, 2), -2.0))
    cache.extend(filled(1, 1, 3.0))
    assert cache.batch_size == 3 and cache.lengths.tolist() == [3, 5, 1]
    assert torch.equal(cache.keys[:, 2, :, 4], torch.full((2, 1, 2), 3.0))

    longer = KVCache(num_layers=2, batch_size=1, num_kv_heads=1, head_dim=2, max_length=12)
    longer.advance(10)
    with pytest.raises(ValueError, match="holds 8 positions; the joining rows need 10"):
        cache.insert(torch.tensor([0]), longer)
    with pytest.raises(ValueError, match="2 row indices for a cache of 1 rows"):
        cache.insert(torch.tensor([0, 1]), filled(1, 2, 4.0))
    with pytest.raises(ValueError, match="does not fit"):
        cache.insert(torch.tensor([0]), KVCache(num_layers=2, batch_size=1, num_kv_heads=2, head_dim=2, max_length=8))


def test_compact_drops_slots_no_row_uses():
    cache = KVCache(num_layers=1, batch_size=2, num_kv_heads=1, head_dim=1, max_length=6)
    cache.update(0, torch.arange(10.0).reshape(2, 1, 5, 1), torch.zeros(2, 1, 5, 1))
    cache.advance(5, torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]))
    cache.compact()
    assert cache.length == 4 and cache.lengths.tolist() == [3, 4]
    assert cache.keys[0, :, 0, :4, 0].tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]
    cache.select(torch.tensor([0]))
    cache.compact()
    assert cache.length == 3 and cache.keys[0, 0, 0, :3, 0].tolist() == [2, 3, 4]
    cache.compact()  # nothing left to drop
    assert cache.length == 3
