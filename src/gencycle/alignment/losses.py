"""The pure pieces of alignment: KL estimates, GAE, whitening, the PPO and DPO losses.

No model and no optimizer: tensors in, tensors out, so each piece is tested against its
formula. B is the number of rows (sequences), T the positions, V the vocabulary.
Per-token tensors are (B, T) and come with a `mask` (B, T), true (or 1) where the position
is a response token that counts. A decoder-only row [prompt | response | padding] has mask
zeros at both ends. Means over a mask are taken over all counted tokens of the batch
together (not per row first), and are 0 when nothing counts. Values at masked positions
are never read, so they may be anything, NaN included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

KL_KINDS = ("k1", "k2", "k3")
DPO_LOSS_TYPES = ("sigmoid", "ipo")


# --- masked reductions -------------------------------------------------------------------

def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is true, over `dim` (all dims when None). values, mask: one shape."""
    kept = torch.where(mask.bool(), values, 0)  # a select, not a product: NaN where masked stays out
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is true, over `dim` (all dims when None); 0 where nothing counts."""
    mask = mask.bool()
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance (a 0-d tensor) of `values` where `mask` is true; unbiased divides by n - 1.

    Raises ValueError when fewer than 2 (unbiased) or 1 positions count.
    """
    mask = mask.bool()
    count = int(mask.sum())
    if count < 1 + unbiased:
        raise ValueError(f"the variance needs at least {1 + unbiased} counted positions, the mask has {count}")
    centered = values - masked_mean(values, mask)
    return masked_sum(centered.square(), mask) / (count - unbiased)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale `values` (B, T) to unit variance over the counted positions of the whole batch.

    (values - mean) / sqrt(var + eps) with the masked mean and the unbiased masked variance;
    with shift_mean=False the mean is added back (only the scale changes). Returns (B, T),
    0 at masked positions. Raises ValueError when fewer than 2 positions count.
    """
    _same_shape(values=values, mask=mask)
    mask = mask.bool()
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0)


# --- KL ------------------------------------------------------------------------------------

def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimates of KL(policy || reference) at tokens sampled from the policy.

    logprobs, ref_logprobs (B, T), or any one shape: log p(x_t) under the policy and log q(x_t)
    under the reference. With r = q / p, so log r = ref_logprobs - logprobs (Schulman,
    "Approximating KL divergence", 2020):

        k1 = -log r = log p - log q     unbiased, either sign per token
        k2 = (log r)^2 / 2              biased, >= 0, low variance
        k3 = (r - 1) - log r            unbiased, >= 0, low variance (large when r is)

    Returns the estimates, same shape, not masked: reduce with `masked_mean` / `masked_sum`.
    """
    _check_choice("kind", kind, KL_KINDS)
    _same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    return torch.expm1(log_ratio) - log_ratio  # expm1: exact for r near 1, where k3 ~ (log r)^2 / 2


@torch.no_grad()
def kl_penalized_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float, kind: str = "k1") -> torch.Tensor:
    """PPO's per-token rewards: a KL penalty on every response token, the score on the last.

    score (B,): the reward model's scalar for each row. logprobs, ref_logprobs, mask (B, T).
    rewards[b, t] = -kl_coef * kl_estimate(logprobs, ref_logprobs, kind)[b, t] where mask[b, t],
    0 elsewhere; score[b] is added at the last position where mask[b] is true (the final
    response token, wherever the row's prompt and padding lie). Returns rewards (B, T),
    detached (they are targets). Raises ValueError when kl_coef < 0, kind is unknown, or a
    row has no response token (its score would have nowhere to go).
    """
    if not kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0 (the weight of a KL penalty), got {kl_coef}")
    _same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    batch, length = mask.shape
    if score.shape != (batch,):
        raise ValueError(f"score must have shape ({batch},), one per row, got {tuple(score.shape)}")
    mask = mask.bool()
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} have no response token (mask all false): their score has nowhere to go")
    kl = kl_estimate(logprobs, ref_logprobs, kind)
    rewards = torch.where(mask, -kl_coef * kl, 0).to(torch.promote_types(kl.dtype, score.dtype))
    positions = torch.arange(length, device=mask.device)
    last = torch.where(mask, positions, -1).amax(-1)  # (B,) the last response token of each row
    rewards[torch.arange(batch, device=mask.device), last] += score.to(rewards.dtype)
    return rewards


class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. 2019, steered towards a target KL.

    After each batch: error = clip(current_kl / target - 1, -0.2, 0.2) and
    kl_coef *= 1 + error * n_steps / horizon, so a KL above the target raises the penalty.
    `current_kl` is in the unit of `target`: the mean over rows of each sequence's summed
    per-token KL (nats), as TRL's `target=6` means; `n_steps` is the rows in the batch.
    """

    def __init__(self, init_kl_coef: float = 0.2, target: float = 6.0, horizon: float = 10000):
        if not init_kl_coef >= 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"target (the KL to steer to) must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.kl_coef, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move the coefficient after a batch of n_steps rows whose mean KL was current_kl; return it."""
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}")
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.kl_coef *= 1 + error * n_steps / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


class FixedKLController:
    """A KL coefficient that stays where it is set (TRL's newer PPO: kl_coef 0.05)."""

    def __init__(self, kl_coef: float = 0.05):
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.kl_coef = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


# --- PPO -----------------------------------------------------------------------------------

@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens of each row.

    rewards, values, mask (B, T). Each row's counted positions t_1 < ... < t_n form one
    episode, whatever lies between or around them (prompt, padding); the episode ends
    after t_n, so V(t_{n+1}) = A(t_{n+1}) = 0:

        delta_k = rewards[t_k] + gamma * values[t_{k+1}] - values[t_k]
        A(t_k)  = delta_k + gamma * lam * A(t_{k+1})
        returns = A + values

    Rewards and values at masked positions are never read. Returns (advantages, returns),
    (B, T) each, 0 at masked positions, detached, in fp32 or wider.
    """
    _same_shape(rewards=rewards, values=values, mask=mask)
    for name, value in (("gamma", gamma), ("lam", lam)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values, mask = rewards.to(dtype), values.to(dtype), mask.bool()
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(rewards.shape[0])      # (B,) value of the next counted position
    next_advantage = rewards.new_zeros(rewards.shape[0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        counted = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(counted, advantage, 0)
        next_value = torch.where(counted, values[:, t], next_value)  # masked: skipped, carried over
        next_advantage = torch.where(counted, advantage, next_advantage)
    return advantages, torch.where(mask, advantages + values, 0)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: mean over counted tokens of max(-A * ratio, -A * clip(ratio)).

    logprobs (B, T): the current policy's (with gradient); old_logprobs, advantages (B, T):
    from the rollout (detached here); mask (B, T). ratio = exp(logprobs - old_logprobs),
    clip(ratio) = ratio clamped to [1 - clip_range, 1 + clip_range].
    Returns (loss, stats), loss 0-d; stats (0-d, detached, over counted tokens):
      clipfrac    the fraction of tokens where the clipped term is the larger (it has no gradient)
      approx_kl   0.5 * mean((logprobs - old_logprobs)^2), the k2 estimate of KL(old || new)
      policy_kl   mean(old_logprobs - logprobs), the k1 estimate of the same
      ratio_mean  mean(ratio); it should stay near 1
    """
    _same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    advantages, mask = advantages.detach(), mask.bool()
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": 0.5 * masked_mean(log_ratio.square(), mask),
                 "policy_kl": masked_mean(-log_ratio, mask),
                 "ratio_mean": masked_mean(ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss: 0.5 * mean over counted tokens of max(unclipped, clipped) errors.

    values (B, T): the critic's (with gradient); old_values, returns (B, T): from the rollout
    (detached here); mask (B, T). The clipped prediction is old_values + clamp(values -
    old_values, -clip_range_value, clip_range_value); each error is squared against returns.
    Returns (loss, stats), loss 0-d; stats (0-d, detached, over counted tokens):
      clipfrac  the fraction of tokens where the clipped error is the larger
      error     mean((values - returns)^2)
    """
    _same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if not clip_range_value > 0:
        raise ValueError(f"clip_range_value must be > 0, got {clip_range_value}")
    old_values, returns, mask = old_values.detach(), returns.detach(), mask.bool()
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_error = (values - returns).square()
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask),
                 "error": masked_mean(unclipped_error, mask)}
    return loss, stats


# --- DPO -----------------------------------------------------------------------------------

def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of a batch of preference pairs, and each side's implicit reward.

    Each argument is (B,): a completion's log-probability (the sum over its tokens, see
    `sequence_logprobs`) under the policy or the frozen reference; the reference ones are
    detached here. With h = (pc - rc) - (pr - rr):
      sigmoid  -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h), eps =
               label_smoothing, the chance a label is flipped (conservative DPO; 0: plain DPO)
      ipo      (h - 1 / (2 * beta))^2 (Azar et al. 2023; the paper and TRL pass log-probs
               averaged over tokens: divide the sums by the token counts first)
    Returns (loss, chosen_rewards, rejected_rewards): the mean over pairs (0-d), and
    beta * (policy - reference) log-probs of each side, (B,) each, detached.
    At policy = reference the sigmoid loss is ln 2.
    """
    _check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    _same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                reference_chosen_logps=reference_chosen_logps, reference_rejected_logps=reference_rejected_logps)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to the sigmoid loss only, not to {loss_type!r}")
    if policy_chosen_logps.numel() == 0:
        raise ValueError("dpo_loss needs at least one preference pair, got an empty batch")
    chosen_log_ratio = policy_chosen_logps - reference_chosen_logps.detach()        # (B,)
    rejected_log_ratio = policy_rejected_logps - reference_rejected_logps.detach()  # (B,)
    h = chosen_log_ratio - rejected_log_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)).square()
    return losses.mean(), beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach()


# --- log-probabilities of given tokens -------------------------------------------------------

_CHUNK_ELEMENTS = 1 << 24  # logits entries widened to fp32 at once (64 MiB)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of given tokens: per token and summed over each row's completion.

    logits (B, T, V): logits[:, t] is the distribution of labels[:, t], already aligned; for a
    causal LM over ids (B, L) pass logits[:, :-1], ids[:, 1:], completion_mask[:, 1:].
    labels (B, T) token ids, not read where masked (-100 there is fine); mask (B, T).
    Returns (sequence_logps (B,), token_logps (B, T)), in fp32 (or fp64 for fp64 logits),
    token_logps 0 at masked positions; gradients flow to logits, in their dtype.

    log p = logits[label] - logsumexp(logits), a chunk of positions at a time: neither a
    (B, T, V) log_softmax nor an fp32 copy of bf16 logits is held, in forward or backward.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits (B, T, V) {tuple(logits.shape)} and labels (B, T) {tuple(labels.shape)} "
                         "must agree on (B, T)")
    _same_shape(labels=labels, mask=mask)
    mask = mask.bool()
    token_logps = _TokenLogprobs.apply(logits, labels.masked_fill(~mask, 0))
    token_logps = torch.where(mask, token_logps, 0)
    return token_logps.sum(-1), token_logps


class _TokenLogprobs(torch.autograd.Function):
    """logits (B, T, V), labels (B, T) -> log_softmax(logits)[labels] (B, T), chunk by chunk."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(logits.dtype, torch.float32)
        lse = logits.new_empty(labels.shape, dtype=wide)  # (B, T) logsumexp over V
        out = torch.empty_like(lse)
        for index in _chunks(logits.shape):
            chunk = logits[index].to(wide)  # (b, t, V)
            lse[index] = torch.logsumexp(chunk, -1)
            out[index] = chunk.gather(-1, labels[index].unsqueeze(-1)).squeeze(-1) - lse[index]
        ctx.save_for_backward(logits, labels, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for index in _chunks(logits.shape):  # d log p / d logits = onehot(label) - softmax
            g = grad_out[index].unsqueeze(-1).to(lse.dtype)  # (b, t, 1)
            chunk = torch.exp(logits[index].to(lse.dtype) - lse[index].unsqueeze(-1)).mul_(-g)
            grad[index] = chunk.scatter_add_(-1, labels[index].unsqueeze(-1), g)
        return grad, None


def _chunks(shape: torch.Size):
    """Index tuples over (B, T) that cover it with blocks of at most _CHUNK_ELEMENTS logits."""
    batch, length, vocab = shape
    positions = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    if positions >= length:
        rows = max(1, positions // max(length, 1))
        for b in range(0, batch, rows):
            yield slice(b, b + rows), slice(None)
        return
    for b in range(batch):
        for t in range(0, length, positions):
            yield slice(b, b + 1), slice(t, t + positions)


# --- argument checks -------------------------------------------------------------------------

def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shapes must match: " + ", ".join(f"{name} {shape}" for name, shape in shapes.items()))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
