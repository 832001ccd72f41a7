"""Alignment: the pure losses (KL estimates, GAE, PPO, DPO); reward models, PPO and DPO build on them."""

from gencycle.alignment.losses import (
    DPO_LOSS_TYPES, KL_KINDS, AdaptiveKLController, FixedKLController, dpo_loss, gae, kl_estimate,
    kl_penalized_rewards, masked_mean, masked_sum, masked_var, policy_loss, sequence_logprobs, value_loss,
    whiten,
)

__all__ = ["DPO_LOSS_TYPES", "KL_KINDS", "AdaptiveKLController", "FixedKLController", "dpo_loss", "gae",
           "kl_estimate", "kl_penalized_rewards", "masked_mean", "masked_sum", "masked_var", "policy_loss",
           "sequence_logprobs", "value_loss", "whiten"]
