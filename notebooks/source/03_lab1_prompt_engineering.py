# %% [markdown]
# # Lab 1: prompt engineering for dialogue summarization
#
# The course's first lab asks a model, without changing any of its weights, to summarize
# conversations, and shows how much the *prompt* matters: asking with no example (zero-shot), with
# one solved example in front (one-shot) or several (few-shot). Here the model is SmolLM2-135M-Instruct
# and the conversations are the 330 real chats shipped with gencycle (from chitchat-dataset), each
# with a reference summary written for this project in DialogSum's style (`#Person1#`, `#Person2#`).
# We look at the prompts, at how the context window fills up with examples, at the generation
# config, and end with a ROUGE table.

# %% [markdown]
# ## Settings
#
# Defaults for a run of a few minutes on 2 CPU cores. **For a learner with more time**: score more
# test dialogues, more shot counts and a sampling config (the whole test split, 55 dialogues, takes
# about half an hour on 2 cores).

# %%
INDEX = 0                 # which test dialogue to look at closely
EVAL_LIMIT = 6            # test dialogues in the ROUGE table
EVAL_SHOTS = (0, 1, 3)    # shot counts compared
EVAL_CONFIGS = ("greedy",)
# More time? For example:
# EVAL_LIMIT, EVAL_SHOTS = 55, (0, 1, 3)
# EVAL_CONFIGS = ("greedy", "sample:temperature=0.7,top_p=0.9")

# %%
import matplotlib.pyplot as plt

import gencycle
from gencycle import GenerationConfig
from gencycle.data import load_shipped
from gencycle.evaluation.compare import PromptMaker, complete, first_paragraph
from gencycle.evaluation.metrics import rouge
from gencycle.workflows.evaluate import evaluate

llm = gencycle.LLM.load("smollm2-135m-instruct")
test, train = load_shipped("test"), load_shipped("train")
print(f"{len(train)} training dialogues (the pool of solved examples), {len(test)} test dialogues")
example = test[INDEX]
print(example.dialogue)
print("\nreference summary:", example.summary)

# %% [markdown]
# ## 1. Zero-shot: only the instruction and the dialogue
#
# The prompt template says what to do and where the dialogue goes. SmolLM2 is a chat model, so the
# prompt is wrapped in its chat template (the `<|im_start|>` markers) before it reaches the model.

# %%
maker = PromptMaker(llm, train, "dialogsum")
generation = GenerationConfig(max_new_tokens=80)        # greedy, at most 80 new tokens
text, messages = maker.build(example, shots=0)
print(llm.format_chat(messages))
zero = complete(llm, [messages], generation, progress=False)[0]
print("model:", first_paragraph(zero))
print("reference:", example.summary)

# %% [markdown]
# ## 2. One-shot and few-shot: solved examples in front
#
# In-context learning: we put one (or more) solved dialogue-and-summary pairs before the query. For a
# chat model each solved example becomes an earlier user turn and the assistant's answer to it. The
# model sees the format it should follow, here DialogSum's third-person style. No weight changes.

# %%
outputs = {0: first_paragraph(zero)}
for shots in (1, 2):
    text, messages = maker.build(example, shots=shots)
    outputs[shots] = first_paragraph(complete(llm, [messages], generation, progress=False)[0])
    print(f"--- {shots}-shot: {len(messages)} chat messages, {len(llm.tokenizer.encode(llm.format_chat(messages)))} tokens")
    print("model:", outputs[shots])
print("\nreference:", example.summary)
for shots, output in outputs.items():
    print(f"{shots}-shot ROUGE-1 against the reference: {rouge([output], [example.summary])['rouge1']:.3f}")

# %% [markdown]
# ## 3. The context window fills up
#
# Every example costs tokens. SmolLM2's context window is 8,192 tokens, and the prompt plus the summary
# to generate must fit inside it. Below: the prompt's length as examples are added, against the
# window. A model with a 512-token window (the size of many older ones) would be full after one or
# two examples: the builder drops the examples that do not fit and says so.

# %%
%matplotlib inline
# (gencycle's evaluation reports draw into files with matplotlib's file-only "Agg" backend; the line
# above turns the notebook's own figures back on)
window = llm.model.config.max_position_embeddings
counts = []
shot_range = [0, 1, 2, 4, 8, 16, 32]
for shots in shot_range:
    _, messages = maker.build(example, shots=shots)
    counts.append(len(llm.tokenizer.encode(llm.format_chat(messages))))
plt.figure(figsize=(6, 3.5))
plt.plot(shot_range, counts, "o-", label="prompt tokens")
plt.axhline(window - 80, color="red", ls="--", label=f"window {window:,} minus 80 for the summary")
plt.axhline(512, color="grey", ls=":", label="a 512-token window")
plt.xlabel("in-context examples")
plt.ylabel("tokens")
plt.legend(fontsize=8)
plt.show()
for shots, n in zip(shot_range, counts):
    print(f"{shots:>3} shots: {n:>5} tokens ({n / window:.0%} of the window)")

import warnings

from gencycle.prompting import FewShotBuilder

small = FewShotBuilder.from_templates("dialogsum", train, count_tokens=lambda t: len(llm.tokenizer.encode(t)),
                                      max_tokens=512 - 80)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fitted = small.build(example, shots=5)
print(f"\n5 shots asked in a 512-token window: {len(fitted.examples_used)} kept, {fitted.dropped} dropped")
for w in caught:
    print("warning:", w.message)

# %% [markdown]
# ## 4. The generation config
#
# How the summary is decoded is a setting of its own: greedy or sampling, temperature, top-p, the
# maximum length. The comparison below uses `greedy` (the same output every run); sampling configs
# are written as `"sample:temperature=0.7,top_p=0.9"`.

# %%
from gencycle.evaluation.compare import parse_config

for spec in ("greedy", "sample:temperature=0.7,top_p=0.9", "beam:num_beams=4"):
    c = parse_config(spec)
    print(f"{spec:<36} do_sample={c.do_sample}, temperature={c.temperature}, top_p={c.top_p}, num_beams={c.num_beams}")

# %% [markdown]
# ## 5. The ROUGE table
#
# ROUGE counts the words (ROUGE-1), word pairs (ROUGE-2) and longest common word sequence (ROUGE-L) that
# the model's summary shares with the reference, from 0 to 1. The evaluate workflow runs every
# (shots x config) variant over the first test dialogues and writes a report (Markdown, HTML, a chart)
# to `lab1_evaluate/`. With a handful of dialogues, differences of a few points are noise.

# %%
result = evaluate(llm, shots=EVAL_SHOTS, config=EVAL_CONFIGS, limit=EVAL_LIMIT, out="lab1_evaluate")
names = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
print(f"{'variant':<28}" + "".join(f"{n:>11}" for n in names))
for r in result.results:
    print(f"{r.name:<28}" + "".join(f"{r.scores[n]:>11.4f}" for n in names))
print("\nreport:", result.paths.get("markdown", result.paths))
