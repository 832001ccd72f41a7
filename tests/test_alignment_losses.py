"""The pure alignment losses equal their formulas: KL estimates, GAE, whitening, PPO, DPO, log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from gencycle.alignment import (
    AdaptiveKLController, FixedKLController, dpo_loss, gae, kl_estimate, kl_penalized_rewards, masked_mean,
    masked_sum, masked_var, policy_loss, sequence_logprobs, value_loss, whiten,
)
from gencycle.alignment import losses


def _masks() -> torch.Tensor:
    """(5, 8) masks of decoder-only rows: right padding, prompt zeros on the left, both, a hole, none."""
    return torch.tensor([
        [1, 1, 1, 1, 1, 0, 0, 0],  # response then padding
        [0, 0, 0, 1, 1, 1, 1, 1],  # prompt then response
        [0, 0, 1, 1, 1, 1, 0, 0],  # prompt, response, padding
        [0, 1, 1, 0, 1, 1, 1, 0],  # a hole in the middle
        [0, 0, 0, 0, 0, 0, 0, 0],  # nothing counts
    ], dtype=torch.bool)


# --- KL estimates --------------------------------------------------------------------------

def test_kl_estimate_k1_k2_k3_match_their_definitions():
    logprobs, ref_logprobs = -torch.rand(4, 6) * 3, -torch.rand(4, 6) * 3
    r = torch.exp(ref_logprobs) / torch.exp(logprobs)  # r = q / p
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k1"), logprobs - ref_logprobs)
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k2"), 0.5 * torch.log(r) ** 2)
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k3"), (r - 1) - torch.log(r))
    assert (kl_estimate(logprobs, ref_logprobs, "k3") >= 0).all()
    assert torch.equal(kl_estimate(logprobs, ref_logprobs), kl_estimate(logprobs, ref_logprobs, "k1"))


def test_kl_estimate_k1_exact_values():
    """TRL's fixed case for its "kl" penalty (tests/test_ppo_trainer.py@v0.8.6)."""
    logprobs = torch.tensor([[0.5, 0.2, 0.1], [0.6, 0.2, 0.1]])
    ref_logprobs = torch.tensor([[0.4, 0.3, 0.0], [0.7, 0.1, 0.3]])
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k1"),
                               torch.tensor([[0.1, -0.1, 0.1], [-0.1, 0.1, -0.2]]))


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    """Averaged over the policy's own distribution, k1 and k3 give KL(p || q) exactly."""
    p = torch.softmax(torch.randn(50, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(50, dtype=torch.float64), 0)
    exact = (p * (p.log() - q.log())).sum()
    for kind in ("k1", "k3"):
        torch.testing.assert_close((p * kl_estimate(p.log(), q.log(), kind)).sum(), exact)


def test_kl_estimate_bad_input():
    with pytest.raises(ValueError, match="unknown kind 'abs'; choose one of k1, k2, k3"):
        kl_estimate(torch.zeros(2, 3), torch.zeros(2, 3), "abs")
    with pytest.raises(ValueError, match="shapes must match"):
        kl_estimate(torch.zeros(2, 3), torch.zeros(3, 2))


# --- masked reductions and whitening ---------------------------------------------------------

def test_masked_reductions_equal_torch_on_the_selected_values():
    values, mask = torch.randn(5, 8), _masks()
    values[~mask] = float("nan")  # never read
    kept = values[mask]
    torch.testing.assert_close(masked_sum(values, mask), kept.sum())
    torch.testing.assert_close(masked_mean(values, mask), kept.mean())
    torch.testing.assert_close(masked_var(values, mask), kept.var())
    torch.testing.assert_close(masked_var(values, mask, unbiased=False), kept.var(unbiased=False))
    rows = masked_mean(values, mask, dim=1)
    torch.testing.assert_close(rows[:4], torch.stack([values[i][mask[i]].mean() for i in range(4)]))
    assert rows[4] == 0  # nothing counts: 0, not NaN
    assert masked_mean(values, torch.zeros_like(mask)) == 0


def test_whiten_gives_mean_0_and_std_1_over_the_masked_positions():
    values, mask = torch.randn(5, 8) * 3 + 2, _masks()
    values[~mask] = float("nan")
    out = whiten(values, mask)
    kept = out[mask]
    assert abs(float(kept.mean())) < 1e-6 and abs(float(kept.std()) - 1) < 1e-6  # unbiased std
    torch.testing.assert_close(kept, (values[mask] - values[mask].mean()) / values[mask].std())
    assert (out[~mask] == 0).all()
    unshifted = whiten(values, mask, shift_mean=False)[mask]
    torch.testing.assert_close(unshifted.mean(), values[mask].mean())
    assert abs(float(unshifted.std()) - 1) < 1e-6


def test_whiten_needs_two_counted_positions():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    with pytest.raises(ValueError, match="at least 2 counted positions, the mask has 1"):
        whiten(torch.randn(2, 4), mask)


# --- GAE -------------------------------------------------------------------------------------

def _gae_loop(rewards, values, mask, gamma, lam):
    """The definition, one row and one counted position at a time, in Python floats."""
    advantages = [[0.0] * len(row) for row in rewards]
    returns = [[0.0] * len(row) for row in rewards]
    for b in range(len(rewards)):
        counted = [t for t in range(len(rewards[b])) if mask[b][t]]
        next_value = next_advantage = 0.0
        for t in reversed(counted):
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            next_advantage = delta + gamma * lam * next_advantage
            next_value = values[b][t]
            advantages[b][t] = next_advantage
            returns[b][t] = next_advantage + values[b][t]
    return torch.tensor(advantages, dtype=torch.float64), torch.tensor(returns, dtype=torch.float64)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_a_plain_python_loop(gamma, lam):
    rewards, values, mask = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64), _masks()
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected = _gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(advantages, expected[0])
    torch.testing.assert_close(returns, expected[1])


def test_gae_ignores_values_and_rewards_at_masked_positions():
    rewards, values, mask = torch.randn(5, 8), torch.randn(5, 8), _masks()
    advantages, returns = gae(rewards, values, mask)
    for fill in (torch.randn(5, 8) * 100, torch.full((5, 8), float("nan"))):
        other_values = torch.where(mask, values, fill)
        other_rewards = torch.where(mask, rewards, fill)
        again = gae(other_rewards, other_values, mask)
        assert torch.equal(again[0], advantages) and torch.equal(again[1], returns)  # exactly
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_gae_with_gamma_and_lam_1_is_the_reward_to_go_minus_the_value():
    rewards, values = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = torch.where(mask, rewards, 0).flip(1).cumsum(1).flip(1)  # sum of this and later rewards
    torch.testing.assert_close(returns, torch.where(mask, to_go, 0))
    torch.testing.assert_close(advantages, torch.where(mask, to_go - values, 0))


def test_gae_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        gae(x, x, x.bool(), gamma=1.5)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got -0.1"):
        gae(x, x, x.bool(), lam=-0.1)
    with pytest.raises(ValueError, match="shapes must match"):
        gae(x, torch.zeros(2, 4), x.bool())


# --- PPO losses ------------------------------------------------------------------------------

def test_policy_loss_equals_a_hand_computation():
    ratios = [1.5, 0.9, 1.0, 0.5, 7.0]  # the last position is masked
    logprobs = torch.tensor([ratios]).log().requires_grad_()
    old_logprobs = torch.zeros(1, 5)
    advantages = torch.tensor([[1.0, 1.0, -2.0, -1.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)): max(-1.5, -1.2), max(-0.9, -0.9), max(2, 2), max(0.5, 0.8)
    assert loss.item() == pytest.approx((-1.2 - 0.9 + 2.0 + 0.8) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)  # the first and the fourth token
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.9 + 1.0 + 0.5) / 4)
    logs = [math.log(r) for r in ratios[:4]]
    assert stats["approx_kl"].item() == pytest.approx(0.5 * sum(x * x for x in logs) / 4)
    assert stats["policy_kl"].item() == pytest.approx(-sum(logs) / 4)
    loss.backward()
    # clipped tokens have no gradient; elsewhere d(-A r)/d log p = -A r, over 4 tokens
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.9 / 4, 2.0 / 4, 0.0, 0.0]]))


def test_policy_loss_at_the_rollout_policy_is_minus_the_mean_advantage():
    logprobs, mask = -torch.rand(3, 5), _masks()[:3, :5]
    advantages = torch.randn(3, 5)
    loss, stats = policy_loss(logprobs, logprobs.clone(), advantages, mask)
    torch.testing.assert_close(loss, -advantages[mask].mean())
    assert stats["clipfrac"] == 0 and stats["approx_kl"] == 0 and stats["ratio_mean"] == 1


def test_value_loss_equals_a_hand_computation():
    values = torch.tensor([[0.5, 0.1, -0.3, 2.0, 9.0]], requires_grad=True)  # the last is masked
    old_values = torch.zeros(1, 5)
    returns = torch.tensor([[1.0, 0.0, -1.0, 0.1, 0.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    # clipped predictions 0.2, 0.1, -0.2, 0.2; errors (unclipped, clipped):
    # (0.25, 0.64) (0.01, 0.01) (0.49, 0.64) (3.61, 0.01)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01 + 0.64 + 3.61) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["error"].item() == pytest.approx((0.25 + 0.01 + 0.49 + 3.61) / 4)
    loss.backward()  # clipped-larger tokens have no gradient; else 0.5 * 2 (v - R) / 4
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.1 / 4, 0.0, 1.9 / 4, 0.0]]))


def test_ppo_losses_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="clip_range must be > 0, got 0"):
        policy_loss(x, x, x, x, clip_range=0)
    with pytest.raises(ValueError, match="clip_range_value must be > 0, got -1"):
        value_loss(x, x, x, x, clip_range_value=-1)
    with pytest.raises(ValueError, match=r"shapes must match: .*advantages \(2, 4\)"):
        policy_loss(x, x, torch.zeros(2, 4), x)


# --- KL-penalized rewards and the KL controllers ---------------------------------------------

@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_penalized_rewards_put_the_score_on_each_rows_last_response_token(kind):
    mask = _masks()[:4]
    logprobs, ref_logprobs, score = -torch.rand(4, 8), -torch.rand(4, 8), torch.randn(4)
    rewards = kl_penalized_rewards(score, logprobs, ref_logprobs, mask, kl_coef=0.2, kind=kind)
    kl = kl_estimate(logprobs, ref_logprobs, kind)
    for b, last in enumerate([4, 7, 5, 6]):
        for t in range(8):
            expected = -0.2 * kl[b, t] if mask[b, t] else torch.tensor(0.0)
            if t == last:
                expected = expected + score[b]
            torch.testing.assert_close(rewards[b, t], expected)


def test_kl_penalized_rewards_bad_input():
    lp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"kl_coef must be >= 0 \(the weight of a KL penalty\), got -0.1"):
        kl_penalized_rewards(torch.zeros(2), lp, lp, mask, kl_coef=-0.1)
    with pytest.raises(ValueError, match="unknown kind 'full'; choose one of k1, k2, k3"):
        kl_penalized_rewards(torch.zeros(2), lp, lp, mask, kl_coef=0.1, kind="full")
    with pytest.raises(ValueError, match=r"score must have shape \(2,\)"):
        kl_penalized_rewards(torch.zeros(2, 1), lp, lp, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match=r"rows \[1\] have no response token"):
        kl_penalized_rewards(torch.zeros(2), lp, lp, torch.tensor([[0, 1, 0], [0, 0, 0]]), kl_coef=0.1)


def test_adaptive_kl_controller_moves_the_coefficient_towards_the_target():
    above = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    assert above.update(current_kl=12.0, n_steps=256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))  # clipped
    below = AdaptiveKLController(0.2, 6.0, 10000)
    assert below.update(current_kl=1.0, n_steps=256) == pytest.approx(0.2 * (1 - 0.2 * 256 / 10000))
    near = AdaptiveKLController(0.2, 6.0, 10000)
    assert near.update(current_kl=6.6, n_steps=100) == pytest.approx(0.2 * (1 + 0.1 * 100 / 10000))
    on_target = AdaptiveKLController(0.2, 6.0, 10000)
    assert on_target.update(6.0, 256) == pytest.approx(0.2)
    for _ in range(50):
        above.update(12.0, 256)
    assert above.kl_coef > 0.2 * 1.05
    resumed = AdaptiveKLController(0.2, 6.0, 10000)
    resumed.load_state_dict(above.state_dict())
    assert resumed.kl_coef == above.kl_coef


def test_fixed_kl_controller_stays():
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 256) == 0.05 and fixed.kl_coef == 0.05


def test_kl_controllers_bad_input():
    with pytest.raises(ValueError, match="init_kl_coef must be >= 0, got -1"):
        AdaptiveKLController(-1, 6, 10000)
    with pytest.raises(ValueError, match="target .* must be > 0, got 0"):
        AdaptiveKLController(0.2, 0, 10000)
    with pytest.raises(ValueError, match="horizon must be > 0"):
        AdaptiveKLController(0.2, 6, 0)
    with pytest.raises(ValueError, match="current_kl must be finite, got nan"):
        AdaptiveKLController().update(float("nan"), 16)
    with pytest.raises(ValueError, match="kl_coef must be >= 0, got -0.05"):
        FixedKLController(-0.05)


# --- DPO -------------------------------------------------------------------------------------

def _pairs():
    pc, pr = torch.tensor([-5.0, -3.0]), torch.tensor([-6.0, -2.0])
    rc, rr = torch.tensor([-5.5, -3.5]), torch.tensor([-5.0, -2.5])
    return pc, pr, rc, rr  # h = (pc - rc) - (pr - rr) = [1.5, 0.0]


def _neg_logsigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_dpo_loss_equals_the_formula_on_fixed_inputs():
    loss, chosen, rejected = dpo_loss(*_pairs(), beta=0.1)
    assert loss.item() == pytest.approx((_neg_logsigmoid(0.15) + math.log(2)) / 2)
    torch.testing.assert_close(chosen, torch.tensor([0.05, 0.05]))
    torch.testing.assert_close(rejected, torch.tensor([-0.1, 0.05]))


def test_dpo_loss_is_ln_2_when_policy_equals_reference():
    chosen_logps, rejected_logps = -torch.rand(8) * 20, -torch.rand(8) * 20
    loss, chosen, rejected = dpo_loss(chosen_logps, rejected_logps, chosen_logps.clone(), rejected_logps.clone())
    assert loss.item() == pytest.approx(math.log(2))
    assert (chosen == 0).all() and (rejected == 0).all()


def test_dpo_label_smoothing_and_ipo_equal_their_formulas():
    loss, _, _ = dpo_loss(*_pairs(), beta=0.1, label_smoothing=0.2)
    per_pair = [0.8 * _neg_logsigmoid(0.1 * h) + 0.2 * _neg_logsigmoid(-0.1 * h) for h in (1.5, 0.0)]
    assert loss.item() == pytest.approx(sum(per_pair) / 2)
    loss, _, _ = dpo_loss(*_pairs(), beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(((1.5 - 5.0) ** 2 + (0.0 - 5.0) ** 2) / 2)


def test_dpo_gradient_raises_chosen_lowers_rejected_and_skips_the_reference():
    pc, pr, rc, rr = (x.clone().requires_grad_() for x in _pairs())
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected
    assert rc.grad is None and rr.grad is None and not chosen.requires_grad and not rejected.requires_grad


def test_dpo_loss_bad_input():
    pairs = _pairs()
    with pytest.raises(ValueError, match="unknown loss_type 'hinge'; choose one of sigmoid, ipo"):
        dpo_loss(*pairs, loss_type="hinge")
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        dpo_loss(*pairs, beta=0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        dpo_loss(*pairs, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing applies to the sigmoid loss only"):
        dpo_loss(*pairs, label_smoothing=0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="shapes must match"):
        dpo_loss(pairs[0], pairs[1], pairs[2], torch.zeros(3))


# --- sequence log-probabilities --------------------------------------------------------------

def _naive(logits, labels, mask):
    """The reference: a full log_softmax, then a gather."""
    token = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token = token * mask
    return token.sum(-1), token


def _batch(dtype=torch.float32, shape=(3, 7, 11)):
    logits = (torch.randn(*shape) * 3).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:2])
    mask = torch.rand(shape[:2]) > 0.3
    return logits, labels.masked_fill(~mask, -100), mask


@pytest.mark.parametrize("chunk", [1 << 24, 11 * 3, 11 * 7 * 2, 1])  # one block, within rows, 2 rows, 1 token
def test_sequence_logprobs_equal_a_naive_log_softmax_gather(monkeypatch, chunk):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)
    logits, labels, mask = _batch()
    sequence, tokens = sequence_logprobs(logits, labels, mask)
    expected_sequence, expected_tokens = _naive(logits, labels, mask)
    assert sequence.shape == (3,) and tokens.shape == (3, 7) and tokens.dtype == torch.float32
    torch.testing.assert_close(tokens, expected_tokens)
    torch.testing.assert_close(sequence, expected_sequence)
    assert (tokens[~mask] == 0).all()


@pytest.mark.parametrize("chunk", [1 << 24, 11 * 3])
def test_sequence_logprobs_gradient_equals_the_naive_one(monkeypatch, chunk):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)
    logits, labels, mask = _batch()
    weights = torch.randn(3)
    ours, naive = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    (sequence_logprobs(ours, labels, mask)[0] * weights).sum().backward()
    (_naive(naive, labels, mask)[0] * weights).sum().backward()
    torch.testing.assert_close(ours.grad, naive.grad)


def test_sequence_logprobs_gradcheck_in_float64(monkeypatch):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 5 * 2)
    logits, labels, mask = _batch(torch.float64, (2, 4, 5))
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sequence_logprobs(x, labels, mask)[1], (logits,))


def test_sequence_logprobs_of_bf16_logits_are_fp32_with_a_bf16_gradient():
    logits, labels, mask = _batch(torch.bfloat16)
    logits.requires_grad_()
    sequence, tokens = sequence_logprobs(logits, labels, mask)
    assert tokens.dtype == torch.float32
    torch.testing.assert_close(sequence, _naive(logits.detach(), labels, mask)[0])  # no bf16 rounding
    sequence.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_sequence_logprobs_of_a_causal_lm_use_the_shifted_recipe():
    """logits (B, L, V) over ids (B, L): position j scores token j + 1."""
    logits, ids = torch.randn(2, 6, 9), torch.randint(0, 9, (2, 6))
    completion = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    sequence, _ = sequence_logprobs(logits[:, :-1], ids[:, 1:], completion[:, 1:])
    log_probs = torch.log_softmax(logits, -1)
    expected = [sum(log_probs[b, j - 1, ids[b, j]] for j in range(6) if completion[b, j]) for b in range(2)]
    torch.testing.assert_close(sequence, torch.stack(expected))


def test_sequence_logprobs_bad_shapes():
    with pytest.raises(ValueError, match=r"logits \(B, T, V\) \(2, 5, 9\) and labels \(B, T\) \(2, 6\)"):
        sequence_logprobs(torch.zeros(2, 5, 9), torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6))
