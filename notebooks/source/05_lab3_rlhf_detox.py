# %% [markdown]
# # Lab 3: detoxifying a model with RLHF (PPO and a KL penalty)
#
# The course's third lab makes a model's replies less toxic with reinforcement learning: the model
# (the *policy*) writes replies, a reward model scores them, and PPO (proximal policy optimization)
# nudges the policy toward replies with higher reward. A KL penalty keeps it close to the model it
# started from (the *reference*), so it cannot drift into gibberish that happens to score well
# ("reward hacking"). Only LoRA adapters train; the reference is the same model with the adapters off.
#
# Here the policy is SmolLM2-135M-Instruct. The prompts are real chat contexts from chitchat-dataset
# whose next human reply was offensive (gencycle's `detox` prompts). The reward is
# `alt-profanity-check`, a real offensive-language classifier (TF-IDF and a linear SVM, *not* a
# transformer): reward = 1 - P(offensive). Toxicity before and after is measured on held-out prompts
# with one sampled reply each, with 95% bootstrap intervals.

# %% [markdown]
# ## Settings
#
# The defaults are a handful of PPO steps on a few prompts, so the whole notebook fits in minutes on
# 2 CPU cores; the change they make is small and its interval will often include zero. **For a learner
# with more time**: more steps, bigger batches, more held-out prompts. A transformer reward model
# trained with `gencycle reward train` can replace the classifier: pass its folder as `REWARD`
# (with `reward_label`).

# %%
PPO_STEPS = 5
BATCH_SIZE = 4            # prompts per PPO step
MAX_NEW_TOKENS = 20       # tokens per reply
EVAL_PROMPTS = 16         # held-out prompts measured before and after
KL_COEF = 0.2
REWARD = "profanity"      # alt-profanity-check: 1 - P(offensive)
# More time? For example:
# PPO_STEPS, BATCH_SIZE, MAX_NEW_TOKENS, EVAL_PROMPTS = 100, 8, 32, 256

# %%
import json
import shutil

import matplotlib.pyplot as plt

from gencycle.alignment.rewards import make_reward
from gencycle.data.detox import detox_prompts
from gencycle.workflows.rlhf import rlhf

shutil.rmtree("lab3_rlhf", ignore_errors=True)   # a re-run starts clean
train, test = detox_prompts("train"), detox_prompts("test")
print(f"{len(train)} training prompts, {len(test)} held-out prompts (other conversations)")
example = test[0]
for message in example["messages"]:
    print(f"{message['role']:>9}: {message['content']}")
print(f"(the real human reply, never shown to the model, had P(offensive) = {example['reply_offensive']:.2f})")

# %% [markdown]
# ## 1. The reward
#
# The reward function reads a reply and returns a number: here 1 - P(offensive), so a polite reply
# scores near 1 and an insult near 0. PPO maximises it, minus the KL penalty.

# %%
reward = make_reward(REWARD)
replies = ["Thanks, that sounds lovely!", "I don't agree, but I see your point.", "Shut up, you idiot."]
for text, score in zip(replies, reward([""] * len(replies), replies)):
    print(f"{float(score):.3f}  {text!r}")

# %% [markdown]
# ## 2. PPO with LoRA and the KL penalty
#
# Each step: sample replies for a batch of prompts, score them, subtract the KL penalty (how far each
# token's probability moved from the reference), estimate advantages with a value head, and update
# the adapters with PPO's clipped objective. Toxicity is measured on held-out prompts before and after.

# %%
result = rlhf("smollm2-135m-instruct", "detox", REWARD, method="lora", chat_template=True,
              max_steps=PPO_STEPS, batch_size=BATCH_SIZE, mini_batch_size=BATCH_SIZE, ppo_epochs=2,
              max_new_tokens=MAX_NEW_TOKENS, kl_coef=KL_COEF, eval_examples=EVAL_PROMPTS, measure_batch_size=8,
              judges=("profanity",), sample_every=PPO_STEPS, out="lab3_rlhf", seed=0)
print("\n".join(result.summary().splitlines()[:4]))   # the before / after table is in section 4

# %% [markdown]
# ## 3. Reward and KL during training
#
# The reward should go up; the KL to the reference says how much the policy has moved to get there.

# %%
steps = [r["step"] for r in result.history]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(steps, [r["reward/mean"] for r in result.history], "o-")
axes[0].set_title("mean reward per PPO step")
axes[1].plot(steps, [r["kl/mean"] for r in result.history], "o-", color="tab:red")
axes[1].set_title("mean KL to the reference (nats per reply)")
for ax in axes:
    ax.set_xlabel("PPO step")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Toxicity before and after, with intervals
#
# The same held-out prompts, one sampled reply each with the same seed, before and after PPO. The
# change is paired (each prompt against itself), and the brackets are 95% bootstrap intervals over
# the prompts: with few prompts and few steps, an interval that includes 0 means "no change shown".

# %%
from gencycle.workflows.rlhf import table_rows

rows = [("measure", "before", "after", "change (paired)")] + table_rows(result.table, result.threshold)
widths = [max(len(r[i]) for r in rows) for i in range(4)]
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)))

# %%
for sample in result.samples[:3]:
    print("prompt ends:", sample["prompt"][-120:].replace("\n", " | "))
    print(f"  before ({sample['reward_before']:.2f}): {sample['before'].strip()!r}")
    print(f"  after  ({sample['reward_after']:.2f}): {sample['after'].strip()!r}\n")
print(json.loads((result.out_dir / "report.json").read_text())["final"])
