# %% [markdown]
# # Generation parameters: how the next token is chosen
#
# A language model gives, at each step, a probability for every token of its vocabulary. How we
# pick one from that distribution is up to us, and the playground's knobs are exactly these
# choices: greedy decoding, random sampling, top-k, top-p (nucleus) and temperature, plus penalties
# against repetition. This notebook shows each one on SmolLM2-135M-Instruct: the distribution
# before and after each processor, the text it leads to, greedy decoding looping and being cured,
# and seeds for reproducible samples.

# %% [markdown]
# ## Settings
#
# Defaults for a short run. **For a learner with more time**: longer completions, more samples per
# setting, another prompt.

# %%
PROMPT = "Write one sentence about the sea."
MAX_NEW_TOKENS = 30
SAMPLES = 2          # completions per sampling setting
# More time? For example:
# PROMPT = "Tell me a short story about a lighthouse keeper."
# MAX_NEW_TOKENS, SAMPLES = 120, 5

# %%
import matplotlib.pyplot as plt
import torch

import gencycle
from gencycle import GenerationConfig
from gencycle.generation.processors import temperature, top_k, top_p

torch.set_grad_enabled(False)
llm = gencycle.LLM.load("smollm2-135m-instruct")
tok = llm.tokenizer
chat = [{"role": "user", "content": PROMPT}]
prompt_text = llm.format_chat(chat)                 # SmolLM2's chat template around the question
print(prompt_text)

# %% [markdown]
# ## 1. The next-token distribution, and what each processor does to it
#
# We take the logits for the first token of the answer. Temperature divides the logits before the
# softmax: below 1 the distribution gets sharper, above 1 flatter. Top-k keeps only the k most
# likely tokens; top-p keeps the smallest set of tokens whose probabilities add up to p. Whatever is
# removed gets probability 0, and the rest is renormalised.

# %%
ids = torch.tensor([tok.encode(prompt_text, add_special_tokens=False)])
logits = llm.model(ids).logits[:, -1].float()        # (1, vocabulary)
base = torch.softmax(logits, -1)[0]
shown = base.topk(15).indices                        # the 15 most likely tokens, kept in this order
labels = [repr(tok.decode([i])) for i in shown.tolist()]

variants = {
    "unchanged": logits,
    "temperature 0.5": temperature(logits, 0.5),
    "temperature 1.5": temperature(logits, 1.5),
    "top-k 5": top_k(logits, 5),
    "top-p 0.5": top_p(logits, 0.5),
    "temperature 1.5 then top-p 0.9": top_p(temperature(logits, 1.5), 0.9),
}
fig, axes = plt.subplots(2, 3, figsize=(13, 6), sharey=True)
for ax, (name, scores) in zip(axes.flat, variants.items()):
    probs = torch.softmax(scores, -1)[0]
    kept = int((probs > 0).sum())
    ax.bar(range(len(shown)), probs[shown])
    ax.set_title(f"{name}\n{kept:,} tokens can be drawn", fontsize=9)
    ax.set_xticks(range(len(shown)), labels, rotation=90, fontsize=7)
axes[0, 0].set_ylabel("probability")
plt.tight_layout()
plt.show()
for name, scores in variants.items():
    probs = torch.softmax(scores, -1)[0]
    print(f"{name:<32} top token {probs.max():.2f}, tokens left {int((probs > 0).sum()):>6,}")

# %% [markdown]
# ## 2. The same prompt under each setting
#
# Greedy decoding takes the most likely token every time, so it always writes the same answer.
# Sampling draws from the distribution, so each run differs; top-k, top-p and a low temperature keep
# the draws among likely tokens, a high temperature lets unlikely ones in.

# %%
settings = {
    "greedy": dict(do_sample=False),
    "random sampling (t=1)": dict(do_sample=True),
    "top-k 10": dict(do_sample=True, top_k=10),
    "top-p 0.9": dict(do_sample=True, top_p=0.9),
    "temperature 0.3": dict(do_sample=True, temperature=0.3),
    "temperature 1.8": dict(do_sample=True, temperature=1.8),
}
for name, options in settings.items():
    n = 1 if not options["do_sample"] else SAMPLES
    for s in range(n):
        text = llm.chat(chat, max_new_tokens=MAX_NEW_TOKENS, seed=s, **options)
        print(f"[{name}{'' if n == 1 else f', seed {s}'}] {text!r}")

# %% [markdown]
# ## 3. Repetition in greedy decoding, and two cures
#
# Without a chat template, a small model continuing a plain text greedily often falls into a loop:
# once a phrase is the most likely continuation of itself, greedy decoding repeats it forever. A
# repetition penalty lowers the score of tokens already in the text; `no_repeat_ngram_size` forbids
# any run of n tokens from appearing twice.

# %%
plain = "My favourite things are"


def repeated_share(text, n=3):
    """Share of the word 3-grams of `text` that already appeared earlier in it."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return sum(g in grams[:i] for i, g in enumerate(grams)) / max(len(grams), 1)


for name, options in [("greedy", {}), ("greedy + repetition_penalty 1.3", dict(repetition_penalty=1.3)),
                      ("greedy + no_repeat_ngram_size 3", dict(no_repeat_ngram_size=3))]:
    text = llm.generate(plain, max_new_tokens=60, **options)
    print(f"[{name}] repeated 3-grams {repeated_share(text):.0%}\n  {plain}{text!r}\n")

# %% [markdown]
# ## 4. Seeds and reproducibility
#
# Sampling is random, but the randomness comes from a seeded generator: the same seed gives the same
# text, a different seed a different one. Reports and tests fix the seed so a run can be repeated.

# %%
config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_p=0.9, temperature=0.9)
first = llm.chat(chat, config, seed=7)
again = llm.chat(chat, config, seed=7)
other = llm.chat(chat, config, seed=8)
print("seed 7 :", repr(first))
print("seed 7 :", repr(again))
print("seed 8 :", repr(other))
assert first == again, "the same seed must give the same sample"

# %% [markdown]
# ## 5. Bad settings are refused at once
#
# The parameters have ranges (top_p in (0, 1], temperature >= 0, ...). A value outside them is an
# error that names it, before any token is generated.

# %%
for bad in [dict(top_p=1.5), dict(temperature=-1.0), dict(top_k=-3)]:
    try:
        GenerationConfig(**bad)
    except ValueError as error:
        print(f"{bad}: {error}")
