# %% [markdown]
# # Lifecycle sizing: memory, compute and the Chinchilla trade-off
#
# Before training or serving a model, the course asks three questions: will it fit in memory, how
# much compute will it take, and how big should it be for the compute we have. `gencycle.compute`
# answers them from a `ModelConfig` alone, with arithmetic and no tensors. Here we size SmolLM2-135M
# (checking the count against the real model), a 7B and a 70B Llama-shaped model, and plot the
# compute-optimal trade-off between parameters and training tokens from the Chinchilla paper.

# %% [markdown]
# ## Settings
#
# All of this is arithmetic and runs in seconds. **For a learner with more time**: try your own
# shapes, another GPU's peak, more devices or another sharding (`zero1`, `zero2`, `zero3`, `fsdp`).

# %%
DEVICES = 8
PEAK_TFLOPS = 312.0      # an A100's dense bf16 peak
MFU = 0.4                # the share of the peak a good training run reaches
BATCH, SEQ = 1, 4096     # per-device micro-batch and sequence length for the memory table
# More time? For example:
# DEVICES, PEAK_TFLOPS, MFU = 64, 989.0, 0.35   # an H100's dense bf16 peak

# %%
import matplotlib.pyplot as plt
import numpy as np

import gencycle
from gencycle import ModelConfig, compute
from gencycle.inspection import format_bytes

smollm2 = gencycle.load_model("smollm2-135m-instruct").config
llama_7b = ModelConfig(family="llama", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                       intermediate_size=11008, max_position_embeddings=4096, position="rope", norm="rmsnorm",
                       activation="silu", gated_mlp=True, norm_bias=False, tie_embeddings=False)
llama_70b = llama_7b.replace(hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8, intermediate_size=28672)
models = {"SmolLM2-135M": smollm2, "Llama-shaped 7B": llama_7b, "Llama-shaped 70B (GQA)": llama_70b}

# %% [markdown]
# ## 1. Parameters, counted from the configuration
#
# The estimator counts every matrix the `Transformer` would build. For SmolLM2 we can compare with
# the real model: the counts must agree exactly.

# %%
real = gencycle.load_model("smollm2-135m-instruct").num_parameters()
assert compute.num_parameters(smollm2) == real, (compute.num_parameters(smollm2), real)
print(f"SmolLM2: estimated {compute.num_parameters(smollm2):,} = counted in the model {real:,}\n")
for name, config in models.items():
    parts = compute.parameter_breakdown(config)
    total = sum(parts.values())
    print(f"{name:<24} {total / 1e9:7.2f} B  " + ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items()))

# %% [markdown]
# ## 2. Memory: serving and training
#
# To *serve* a model we need its weights (4 bytes a parameter in fp32, 2 in bf16, 1 in int8, half a byte
# in int4) plus a key/value cache that grows with every token in the context. To *train* it with Adam in
# mixed precision, each parameter costs about 16 bytes (weights, gradients, fp32 master copy, two
# optimizer moments) before any activations; sharding those states over devices (ZeRO / FSDP) divides
# them.

# %%
for name, config in models.items():
    n = compute.num_parameters(config)
    weights = ", ".join(f"{d} {format_bytes(compute.weight_bytes(n, d))}" for d in ("fp32", "bf16", "int8", "int4"))
    kv = compute.kv_cache_bytes(config, tokens=SEQ, batch=BATCH, dtype="bf16")
    print(f"{name}\n  serving: weights {weights}; KV cache for {SEQ} tokens {format_bytes(kv)}")
    for sharding in ("none", "fsdp"):
        mem = compute.training_memory(config, batch=BATCH, seq=SEQ, devices=DEVICES, sharding=sharding)
        print(f"  training on {DEVICES} devices, sharding {sharding:<4}: model states "
              f"{format_bytes(mem['model_states']['total'])} per device; with activations "
              f"{format_bytes(mem['total']['none'])} (none recomputed), {format_bytes(mem['total']['full'])} (full checkpointing)")

# %% [markdown]
# ## 3. Compute: FLOPs and time for a training run
#
# Training costs about 6 FLOPs per parameter per token (forward and backward), plus the attention
# scores. With 20 tokens per parameter (the Chinchilla rule of thumb), this is the bill:

# %%
for name, config in models.items():
    report = compute.estimate(config, devices=DEVICES, peak_tflops=PEAK_TFLOPS, mfu=MFU, seq=SEQ)
    f = report["flops"]
    print(f"{name:<24} {f['tokens'] / 1e9:8.1f} B tokens, {f['total']:.2e} FLOPs = {f['pf_days']:10.2f} "
          f"petaflop/s-days, {f['days']:8.2f} days on {DEVICES} x {PEAK_TFLOPS:g} TFLOP/s at {MFU:.0%} MFU")

# %% [markdown]
# ## 4. The Chinchilla trade-off
#
# For a fixed compute budget C = 6 N D we can train a bigger model N on fewer tokens D, or a smaller one
# on more. The Chinchilla fit of the loss, L(N, D) = E + A / N^alpha + B / D^beta, has a minimum along each
# budget's curve: the compute-optimal model size. The dots mark it; the crosses mark the 20-tokens-per-
# parameter rule.

# %%
plt.figure(figsize=(7, 4.5))
for budget in (1e19, 1e20, 1e21, 1e22, 1e23):
    sizes = np.logspace(7, 11.5, 200)
    losses = [compute.chinchilla_loss(n, budget / (6 * n)) for n in sizes]
    line, = plt.plot(sizes, losses, label=f"C = {budget:.0e} FLOPs")
    best = compute.compute_optimal(budget)
    plt.plot(best["approach_3"]["params"], best["approach_3"]["loss"], "o", color=line.get_color())
    plt.plot(best["tokens_per_parameter_20"]["params"], best["tokens_per_parameter_20"]["loss"], "x", color=line.get_color())
plt.xscale("log")
plt.ylim(1.9, 4.0)
plt.xlabel("parameters N (tokens D = C / 6N)")
plt.ylabel("predicted loss")
plt.title("Chinchilla: loss along fixed compute budgets")
plt.legend(fontsize=8)
plt.show()
for budget in (1e19, 1e21, 1e23):
    best = compute.compute_optimal(budget)["approach_3"]
    print(f"C = {budget:.0e}: optimal about {best['params'] / 1e9:.2f} B parameters on "
          f"{best['tokens'] / 1e9:.0f} B tokens ({best['tokens'] / best['params']:.0f} tokens per parameter)")
