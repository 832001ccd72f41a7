"""Logits processors one by one, and sampling checked by its properties over many draws."""

import math

import pytest
import torch

from gencycle import ModelConfig, Transformer, generate
from gencycle.generation import processors as P
from gencycle.generation.config import GenerationConfig

V, PROMPT = 64, 5


@pytest.fixture(scope="module")
def model():
    """A tiny random Llama-style model with a sharpened head, so next-token distributions are peaky."""
    torch.manual_seed(0)
    config = ModelConfig(family="llama", vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=64, max_position_embeddings=128, position="rope", norm="rmsnorm",
                         activation="silu", gated_mlp=True, norm_bias=False, tie_embeddings=False, eos_token_id=1)
    m = Transformer(config).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(40)
    return m


def _prompt():
    return torch.randint(2, V, (1, PROMPT), generator=torch.Generator().manual_seed(1))


def _sample(model, n=64, new=8, **kwargs):
    """n sampled continuations of one prompt, and the logits the model gives at every position."""
    out = generate(model, _prompt(), do_sample=True, max_new_tokens=new, num_return_sequences=n,
                         eos_token_id=[], **kwargs)
    with torch.no_grad():
        logits = model(out).logits                                  # (n, PROMPT + new, V)
    return out[:, PROMPT:], logits[:, PROMPT - 1:-1]               # token t was drawn from logits[:, t]


# ---- processors ----------------------------------------------------------------------------
def test_temperature_one_leaves_the_softmax_unchanged():
    scores = torch.randn(3, 10)
    assert P.temperature(scores, 1.0) is scores
    torch.testing.assert_close(P.temperature(scores, 0.5).softmax(-1), (scores * 2).softmax(-1))


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    scores = torch.tensor([[2.0, -2.0, 1.0, 3.0]])
    ids = torch.tensor([[3, 0, 1]])
    torch.testing.assert_close(P.repetition_penalty(scores, ids, 2.0), torch.tensor([[1.0, -4.0, 1.0, 1.5]]))
    # the first position is left padding: token 3 is not penalized
    torch.testing.assert_close(P.repetition_penalty(scores, ids, 2.0, padding=torch.tensor([1])),
                               torch.tensor([[1.0, -4.0, 1.0, 3.0]]))


def test_no_repeat_ngram_blocks_only_completions_of_seen_ngrams():
    scores, ids = torch.zeros(1, 6), torch.tensor([[1, 2, 3, 1, 2]])
    assert P.no_repeat_ngram(scores, ids, 3).isinf().nonzero()[:, 1].tolist() == [3]   # 1 2 -> 3 seen
    assert P.no_repeat_ngram(scores, ids, 2).isinf().nonzero()[:, 1].tolist() == [3]   # 2 -> 3 seen
    assert P.no_repeat_ngram(scores, ids, 1).isinf().nonzero()[:, 1].tolist() == [1, 2, 3]
    assert not P.no_repeat_ngram(scores, ids, 6).isinf().any()


def test_min_new_tokens_blocks_every_eos_until_reached():
    scores = torch.zeros(2, 5)
    assert P.min_new_tokens(scores, 1, 3, [1, 4]).isinf().sum(1).tolist() == [2, 2]
    assert not P.min_new_tokens(scores, 3, 3, [1, 4]).isinf().any()


def test_top_k_and_top_p_keep_the_right_sets():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert P.top_k(logits, 2).isfinite().tolist() == [[True, True, False, False]]
    assert P.top_p(logits, 0.75).isfinite().tolist() == [[True, True, False, False]]   # 0.8 reaches 0.75
    assert P.top_p(logits, 0.85).isfinite().tolist() == [[True, True, True, False]]
    assert P.top_p(logits, 0.01).isfinite().tolist() == [[True, False, False, False]]  # the top token stays
    assert P.top_p(logits, 1.0) is logits and P.top_k(logits, 0) is logits


def test_process_order_penalties_then_temperature_then_filters():
    scores, ids = torch.randn(2, 12), torch.randint(0, 12, (2, 6))
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.3,
                              no_repeat_ngram_size=2, min_new_tokens=2)
    expected = P.min_new_tokens(P.no_repeat_ngram(P.repetition_penalty(scores, ids, 1.3), ids, 2), 0, 2, [0])
    expected = P.top_p(P.top_k(P.temperature(expected, 0.7), 5), 0.9)
    torch.testing.assert_close(P.process(scores, ids, config, 0, [0]), expected)
    greedy = P.process(scores, ids, config.replace(do_sample=False), 0, [0])   # no warping when greedy
    torch.testing.assert_close(greedy, P.min_new_tokens(P.no_repeat_ngram(
        P.repetition_penalty(scores, ids, 1.3), ids, 2), 0, 2, [0]))


# ---- sampling --------------------------------------------------------------------------------
def test_top_k_never_samples_outside_the_k_most_likely(model):
    tokens, logits = _sample(model, top_k=3, seed=0)
    allowed = logits.topk(3, dim=-1).indices                        # (n, new, 3)
    assert (allowed == tokens[..., None]).any(-1).all()
    assert (tokens != logits.argmax(-1)).any()                      # it really samples


def test_top_p_never_samples_outside_the_nucleus(model):
    p = 0.6
    tokens, logits = _sample(model, top_p=p, seed=1)
    probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
    in_nucleus = (probs.cumsum(-1) - probs) < p                     # mass before it has not reached p yet
    nucleus = torch.zeros_like(in_nucleus).scatter(-1, order, in_nucleus)
    assert nucleus.gather(-1, tokens[..., None]).all()
    assert (tokens != logits.argmax(-1)).any()


def test_temperature_towards_zero_equals_greedy(model):
    prompts = torch.randint(2, V, (4, PROMPT), generator=torch.Generator().manual_seed(2))
    greedy = generate(model, prompts, max_new_tokens=10)
    assert torch.equal(generate(model, prompts, max_new_tokens=10, do_sample=True, temperature=1e-4, seed=0), greedy)
    assert torch.equal(generate(model, prompts, max_new_tokens=10, do_sample=True, temperature=0.0), greedy)


def _entropy(tokens: torch.Tensor) -> float:
    counts = torch.bincount(tokens.flatten(), minlength=V).float()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def test_higher_temperature_raises_the_entropy_of_the_draws(model):
    entropies = [_entropy(_sample(model, n=2000, new=1, temperature=t, seed=3)[0]) for t in (0.3, 1.0, 3.0)]
    assert entropies[0] < entropies[1] < entropies[2] <= math.log(V)


def test_same_seed_same_sequences(model):
    prompts = torch.randint(2, V, (3, PROMPT), generator=torch.Generator().manual_seed(4))
    first = generate(model, prompts, do_sample=True, max_new_tokens=12, seed=7)
    assert torch.equal(generate(model, prompts, do_sample=True, max_new_tokens=12, seed=7), first)
    assert not torch.equal(generate(model, prompts, do_sample=True, max_new_tokens=12, seed=8), first)


def test_num_return_sequences_gives_n_rows_per_prompt(model):
    prompts = torch.randint(2, V, (2, PROMPT), generator=torch.Generator().manual_seed(5))
    out = generate(model, prompts, do_sample=True, max_new_tokens=4, num_return_sequences=3, seed=0, eos_token_id=[])
    assert out.shape == (6, PROMPT + 4)
    assert torch.equal(out[:3, :PROMPT], prompts[:1].expand(3, -1)) and torch.equal(out[3:, :PROMPT], prompts[1:].expand(3, -1))
