# %% [markdown]
# # Lab 2: full fine-tuning against LoRA
#
# The course's second lab fine-tunes a model on dialogue summaries in two ways and compares them:
#
# * **full fine-tuning** updates every weight of the model;
# * **LoRA** (low-rank adaptation, a kind of parameter-efficient fine-tuning) freezes the model and
#   trains a small pair of matrices B @ A next to chosen layers; only those are saved, as an adapter
#   of a few megabytes.
#
# Both runs start from SmolLM2-135M-Instruct, train on the shipped training dialogues (each sent
# through the chat template as the zero-shot summarization prompt, the loss on the summary only),
# and are scored with ROUGE on test dialogues before and after. Then the LoRA adapter is loaded back
# in Hugging Face `peft`, and merged into the model and saved as a plain Hugging Face folder.

# %% [markdown]
# ## Settings
#
# The defaults are a few steps on a few dialogues, enough to see the style change on 2 CPU cores in
# minutes; they are far too short for a good model. **For a learner with more time**: more steps,
# more test dialogues, LoRA on every Linear layer at a higher rank.

# %%
LORA_STEPS = 8
FULL_STEPS = 4
BATCH_SIZE = 2
MAX_LENGTH = 320          # tokens per training example at most
TEST_DIALOGUES = 4        # scored with ROUGE before and after
EVAL_DIALOGUES = 4        # validation dialogues for the eval loss before and after
MAX_NEW_TOKENS = 48
LORA_RANK, LORA_TARGET, LORA_LR = 8, "all-linear", 1e-3
FULL_LR = 5e-5
# More time? For example:
# LORA_STEPS, FULL_STEPS, TEST_DIALOGUES, EVAL_DIALOGUES, MAX_NEW_TOKENS = 200, 200, 20, 55, 64
# LORA_RANK, LORA_TARGET = 16, "all-linear"

# %%
import shutil
from pathlib import Path

import torch

import gencycle
from gencycle.data import load_shipped
from gencycle.workflows.finetune import finetune

for folder in ("lab2_base", "lab2_lora", "lab2_full", "lab2_merged"):
    shutil.rmtree(folder, ignore_errors=True)      # a re-run starts clean
tokenizer = gencycle.load_tokenizer("smollm2-135m-instruct")
validation = [{"dialogue": e.dialogue, "summary": e.summary} for e in load_shipped("validation")[:EVAL_DIALOGUES]]
common = dict(eval_data=validation, chat_template=True, template="dialogsum", max_length=MAX_LENGTH, batch_size=BATCH_SIZE,
              rouge_examples=TEST_DIALOGUES, max_new_tokens=MAX_NEW_TOKENS, seed=0, progress=True)

# %% [markdown]
# ## 1. LoRA
#
# Adapters of rank 8 on every Linear layer of the attention and feed-forward blocks; the 135 M base
# weights stay frozen. ROUGE is measured on the same test prompts before training and after.
# (LoRA runs first: the peak memory of a CPU process is its resident size, which never shrinks back,
# so the smaller run is measured before the bigger one.)

# %%
lora = finetune("smollm2-135m-instruct", "shipped", method="lora", lora_rank=LORA_RANK, lora_alpha=2 * LORA_RANK,
                target=LORA_TARGET, lr=LORA_LR, max_steps=LORA_STEPS, warmup_steps=1, out="lab2_lora", **common)
print(lora.summary())

# %% [markdown]
# ## 2. Full fine-tuning
#
# Every parameter trains, with a smaller learning rate. The optimizer keeps two moments for every
# weight, which is where most of the extra memory goes.

# %%
full = finetune("smollm2-135m-instruct", "shipped", method="full", lr=FULL_LR, max_steps=FULL_STEPS,
                warmup_steps=0, out="lab2_full", **common)
print(full.summary())

# %% [markdown]
# ## 3. Before and after
#
# "Before" is the untouched model on the same prompts (the same for both runs: greedy decoding). The eval
# loss is the summary tokens' cross-entropy on a few validation dialogues; ROUGE is on test dialogues.

# %%
rows = [("before (base model)", lora.rouge_before, lora.eval_loss_before, None, None, None),
        (f"after LoRA, {LORA_STEPS} steps", lora.rouge_after, lora.eval_loss_after, lora.parameters,
         lora.peak_memory_bytes, lora.train_seconds),
        (f"after full, {FULL_STEPS} steps", full.rouge_after, full.eval_loss_after, full.parameters,
         full.peak_memory_bytes, full.train_seconds)]
print(f"{'':<24}{'rouge1':>8}{'rouge2':>8}{'rougeL':>8}{'eval loss':>11}  {'trainable':>22}  {'peak memory':>12}  {'train time':>10}")
for name, scores, loss, params, peak, seconds in rows:
    line = f"{name:<24}" + "".join(f"{scores[k]:>8.4f}" for k in ("rouge1", "rouge2", "rougeL")) + f"{loss:>11.4f}"
    if params is not None:
        line += f"  {params.trainable:>12,} ({params.percent:5.2f}%)  {peak / 2**20:>8,.0f} MiB  {seconds:>8.1f} s"
    print(line)
print(f"\npeak memory is the process's resident size ({lora.memory_kind}); "
      f"LoRA's is {lora.peak_memory_bytes / full.peak_memory_bytes:.0%} of full fine-tuning's")
assert lora.rouge_before == full.rouge_before   # the same base model, the same greedy prompts
assert abs(lora.eval_loss_before - full.eval_loss_before) < 1e-4

# %%
for sample in lora.samples[:2]:
    print("reference:  ", sample["reference"])
    print("before:     ", sample["before"].strip())
    print("after LoRA: ", sample["after"].strip())
    print()

# %% [markdown]
# ## 4. The adapter in Hugging Face `peft`
#
# The LoRA run saved only its adapter, in the PEFT format (`adapter_config.json` and
# `adapter_model.safetensors`). We save the base model as a Hugging Face folder, load it in
# `transformers`, put the adapter on it with `peft`, and check that it gives the same logits as the
# model gencycle trained.

# %%
from peft import PeftModel
from transformers import AutoModelForCausalLM

adapter = Path("lab2_lora/adapter")
print(sorted(p.name for p in adapter.iterdir()))
print(f"adapter size: {sum(p.stat().st_size for p in adapter.iterdir()) / 2**20:.1f} MiB")
base = gencycle.load_model("smollm2-135m-instruct")
gencycle.save_pretrained(base, "lab2_base")
tokenizer.save_pretrained("lab2_base")

hf = AutoModelForCausalLM.from_pretrained("lab2_base", dtype=torch.float32)
peft_model = PeftModel.from_pretrained(hf, str(adapter)).eval()
ids = torch.tensor([tokenizer.encode("#Person1#: Are you coming tonight?\n#Person2#: Yes, at eight.")])
with torch.no_grad():
    ours = lora.model.eval()(ids).logits
    theirs = peft_model(input_ids=ids).logits
print(f"largest logit difference, gencycle LoRA vs peft: {(ours - theirs).abs().max():.2e}")
assert torch.allclose(ours, theirs, atol=1e-3)

# %% [markdown]
# ## 5. Merged into the weights, saved as a Hugging Face folder
#
# For serving, the adapter can be folded into the weights: W + (alpha / r) B @ A. The merged model is a
# plain model again (no extra layers, no extra latency), saved in the Hugging Face layout that
# `transformers` loads directly.

# %%
from gencycle.adapters import merge_lora

merged = merge_lora(lora.model, unload=True)
gencycle.save_pretrained(merged, "lab2_merged")
tokenizer.save_pretrained("lab2_merged")
print(sorted(p.name for p in Path("lab2_merged").iterdir()))
reloaded = AutoModelForCausalLM.from_pretrained("lab2_merged", dtype=torch.float32).eval()
with torch.no_grad():
    merged_logits = reloaded(input_ids=ids).logits
print(f"largest logit difference, merged folder in transformers vs peft with the adapter: "
      f"{(merged_logits - theirs).abs().max():.2e}")
assert torch.allclose(merged_logits, theirs, atol=1e-3)
llm = gencycle.LLM.load("lab2_merged")
print(llm.chat([{"role": "user", "content": "Summarize the following conversation.\n\n"
                 "#Person1#: Are you coming tonight?\n#Person2#: Yes, at eight. I'll bring the cake.\n\nSummary:"}],
               max_new_tokens=40))
