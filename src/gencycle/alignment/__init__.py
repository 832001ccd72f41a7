"""Alignment: the pure losses (KL estimates, GAE, PPO, DPO); reward models, rewards, rollouts, PPO and DPO."""

from gencycle.alignment.losses import (
    DPO_LOSS_TYPES, KL_KINDS, AdaptiveKLController, FixedKLController, dpo_loss, gae, kl_estimate,
    kl_penalized_rewards, masked_mean, masked_sum, masked_var, policy_loss, sequence_logprobs, value_loss,
    whiten,
)
from gencycle.alignment.preferences import (
    PreferencePair, load_preferences, load_prompts, sample_preference_pairs, write_preferences,
)
from gencycle.alignment.reward_model import (
    MetricsTrainer, RewardModel, bradley_terry_loss, load_for_scoring, load_reward_model, same_vocabulary,
)
from gencycle.alignment.rollout import ResponseBatch, TokenScores, score_tokens
from gencycle.alignment.rollout import sample as sample_responses
from gencycle.alignment.rewards import (
    CallableReward, ClassifierReward, OffensiveProbability, ProfanityReward, load_callable, make_judge, make_reward,
)
from gencycle.alignment.ppo import PPOConfig, PPOTrainer, PPOWarning, Prompt, frozen_copy
from gencycle.alignment.dpo import (
    DPOCollator, DPOExample, DPOStep, completion_logprobs, precompute_reference, reference_copy,
    tokenize_preference_pairs,
)

__all__ = ["DPO_LOSS_TYPES", "KL_KINDS", "AdaptiveKLController", "FixedKLController", "dpo_loss", "gae",
           "kl_estimate", "kl_penalized_rewards", "masked_mean", "masked_sum", "masked_var", "policy_loss",
           "sequence_logprobs", "value_loss", "whiten"]
__all__ += ["DPOCollator", "DPOExample", "DPOStep", "MetricsTrainer", "PreferencePair", "RewardModel",
            "bradley_terry_loss", "completion_logprobs", "load_for_scoring", "load_preferences", "load_prompts",
            "load_reward_model", "precompute_reference", "reference_copy", "same_vocabulary",
            "sample_preference_pairs", "tokenize_preference_pairs", "write_preferences"]
__all__ += ["CallableReward", "ClassifierReward", "OffensiveProbability", "PPOConfig", "PPOTrainer", "PPOWarning",
            "ProfanityReward", "Prompt", "ResponseBatch", "TokenScores", "frozen_copy", "load_callable", "make_judge",
            "make_reward", "sample_responses", "score_tokens"]
