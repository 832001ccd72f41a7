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
# whose next human reply was offensive (gencycle's `detox` prompts). The scorer is
# `alt-profanity-check`, a real offensive-language classifier (TF-IDF and a linear SVM, *not* a
# transformer) that gives P(offensive). Toxicity before and after is measured on held-out prompts
# with one sampled reply each, with 95% bootstrap intervals.

# %% [markdown]
# ## Settings
#
# The defaults fit the whole notebook in about 10 minutes on 2 CPU cores: short replies, a small
# batch, a few dozen PPO updates at a learning rate higher than a long run would use, and a fixed
# (not adaptive) KL coefficient. Section 4 says whether the change they make is larger than the
# noise of this few held-out prompts.

# %%
PPO_STEPS = 12            # rollout + update rounds
BATCH_SIZE = 8            # prompts per PPO step
PPO_EPOCHS = 2            # passes over each rollout batch (one optimizer step per pass here)
MAX_NEW_TOKENS = 16       # tokens per reply
LR = 1e-3                 # LoRA learning rate
KL_COEF = 0.05            # the KL penalty's weight (kept fixed)
EVAL_PROMPTS = 48         # held-out prompts measured before and after
MEASURE_BATCH = 16        # held-out prompts sampled at once
LORA_TARGET = ("q_proj", "k_proj", "v_proj", "o_proj")

# %% [markdown]
# **Bigger settings, for a learner with more time.** Set `BIGGER = True` to run what the README's
# detoxification lab runs (`make detox-lab`): 30 PPO steps of 16 prompts, 32-token replies, and the
# lab's transformer reward model (all-MiniLM-L6-v2 trained on chitchat messages labelled by
# alt-profanity-check, its raw non-toxic logit as the reward), measured on 200 held-out prompts by
# alt-profanity-check and by the reward model's P(toxic). `make detox-lab` trains that reward model
# into `runs/detox-lab/rm/model` first (run it once before setting `BIGGER`); the whole lab takes
# about 2 hours on 2 busy cores and writes its before / after table to
# `runs/detox-lab/ppo/report.json`. The README's "The detoxification lab (`make detox-lab`)", under
# "Alignment (RLHF and DPO)", shows that table from a real run, with what it does and does not show.

# %%
BIGGER = False
LAB_REWARD_MODEL = "../detox-lab/rm/model"   # from runs/notebooks/, where `make notebooks` runs this
if BIGGER:
    from pathlib import Path
    if not (Path(LAB_REWARD_MODEL) / "config.json").is_file():
        raise FileNotFoundError(f"{LAB_REWARD_MODEL}: the lab's reward model is not there; `make detox-lab` "
                                "trains it (or point LAB_REWARD_MODEL at a `gencycle reward train` folder)")
    PPO_STEPS, BATCH_SIZE, PPO_EPOCHS, MAX_NEW_TOKENS, LR, KL_COEF = 30, 16, 2, 32, 2e-4, 0.05
    EVAL_PROMPTS, MEASURE_BATCH = 200, 25

# %%
import json
import math
import shutil

import matplotlib.pyplot as plt

from gencycle.data.detox import detox_prompts
from gencycle.data.toxicity import offensive_probability
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
# The reward function reads a reply and returns a number; PPO maximises it, minus the KL penalty.
# alt-profanity-check's probability is nearly 1 - 0 = 1 for almost every reply the model writes, so
# the probability would hardly tell one clean reply from another. As the course's lab does with its
# reward model (the raw logit of "not hate"), the reward here is the classifier's *log-odds* of "not
# offensive", log((1 - p) / p): about +4 for a plain friendly reply, near 0 for a borderline one,
# negative for an insult. The classifier's probabilities come from a sigmoid over its linear score,
# so the log-odds is (close to) that raw score.

# %%
def not_offensive_log_odds(prompts, replies):
    """alt-profanity-check's log-odds that each reply is not offensive, in [-6.9, 6.9] (p clipped to
    [0.001, 0.999], so that one insult cannot outweigh a whole batch)."""
    probabilities = [min(max(p, 1e-3), 1 - 1e-3) for p in offensive_probability(list(replies))]
    return [math.log((1 - p) / p) for p in probabilities]


reward = not_offensive_log_odds
judges = ("profanity",)                     # what section 4 measures: alt-profanity-check's P(offensive)
reward_options = {}
if BIGGER:
    reward, judges = LAB_REWARD_MODEL, ("profanity", LAB_REWARD_MODEL)
    reward_options = {"reward_label": "non-toxic", "judge_label": "toxic"}

replies = ["Thanks, that sounds lovely!", "I don't agree, but I see your point.", "Shut up, you idiot."]
for text, p in zip(replies, offensive_probability(replies)):
    print(f"P(offensive) {p:.3f}   reward {not_offensive_log_odds([''], [text])[0]:+6.2f}   {text!r}")

# %% [markdown]
# ## 2. PPO with LoRA and the KL penalty
#
# Each step: sample replies for a batch of prompts, score them, subtract the KL penalty (how far each
# token's probability moved from the reference), estimate advantages with a value head, and update
# the adapters with PPO's clipped objective. Toxicity is measured on held-out prompts before and after.

# %%
result = rlhf("smollm2-135m-instruct", "detox", reward, method="lora", chat_template=True,
              max_prompt_length=160, target=LORA_TARGET, lr=LR, max_steps=PPO_STEPS, batch_size=BATCH_SIZE,
              mini_batch_size=BATCH_SIZE // 2 if BIGGER else BATCH_SIZE, ppo_epochs=PPO_EPOCHS,
              max_new_tokens=MAX_NEW_TOKENS, kl_coef=KL_COEF, adaptive_kl=False,
              eval_examples=EVAL_PROMPTS, measure_batch_size=MEASURE_BATCH, judges=judges,
              sample_every=PPO_STEPS, out="lab3_rlhf", seed=0, **reward_options)
print("\n".join(result.summary().splitlines()[:4]))   # the before / after table is in section 4

# %% [markdown]
# ## 3. Reward and KL during training
#
# The reward should go up; the KL to the reference says how much the policy has moved to get there.

# %%
%matplotlib inline
# (the PPO run drew reward_kl.png with matplotlib's file-only "Agg" backend; the line above turns the
# notebook's own figures back on)
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
# the prompts. An interval that includes 0 means this run shows no change beyond the noise of this
# many prompts; one that excludes 0 is a change that the prompts' noise alone would rarely give.
# The "reward" rows are in the reward's own units (here the log-odds of not offensive).

# %%
from gencycle.workflows.rlhf import table_rows

print(f"{result.eval_prompts} held-out prompts, {len(result.history)} PPO steps of {BATCH_SIZE} prompts, "
      f"{MAX_NEW_TOKENS}-token replies, lr {LR:g}, KL coefficient {KL_COEF:g}")
rows = [("measure", "before", "after", "change (paired)")] + table_rows(result.table, result.threshold)
widths = [max(len(r[i]) for r in rows) for i in range(4)]
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)))

# %% [markdown]
# The same verdict in words, read from the intervals above:

# %%
def verdict(what, change, key="mean"):
    value, (low, high) = change[key], change[f"{key}_ci"]
    side = "includes 0: within the noise" if low <= 0 <= high else "excludes 0: beyond the noise"
    print(f"{what}: change {value:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}] {side} "
          f"of {result.eval_prompts} prompts")


for name, t in result.table["judges"].items():
    verdict(f"{name}, mean", t["change"])
    verdict(f"{name}, share > {result.threshold:g}", t["change"], "share")
verdict(f"reward ({result.reward_name}), mean", result.table["reward"]["change"])

# %% [markdown]
# What changed in the replies: the held-out prompts whose reply before PPO was the most offensive by
# alt-profanity-check, with the reply after (same prompt, same sampling seed).

# %%
judge = next(iter(result.table["judges"]))
worst = sorted(result.samples, key=lambda s: -s[f"{judge} before"])[:4]
for sample in worst:
    print("prompt ends:", sample["prompt"][-100:].replace("\n", " | "))
    print(f"  before (P(offensive) {sample[f'{judge} before']:.2f}): {sample['before'].strip()!r}")
    print(f"  after  (P(offensive) {sample[f'{judge} after']:.2f}): {sample['after'].strip()!r}\n")
print(json.loads((result.out_dir / "report.json").read_text())["final"])
