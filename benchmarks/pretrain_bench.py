"""Pretraining throughput: gencycle's pretraining step against a `transformers` model in a plain loop.

One ~20M-parameter decoder config (the `llama-20m` preset: Llama blocks, hidden 384, 9 layers, an
8k BPE vocabulary trained on the chitchat conversations), written once as a Hugging Face folder
that both sides load, so both train the very same weights on the very same blocks of real text:

- gencycle: `gencycle.workflows.pretrain`'s pieces, the real `Trainer.train_step` over packed blocks
  (`next_token_step`: no padding mask, the loss over every position), eager and compiled
  (`--compile`: the step as one torch.compile graph).
- transformers: `LlamaForCausalLM.from_pretrained(folder)` in a bare loop: forward with labels,
  backward, clip at 1.0, `torch.optim.AdamW` (its default implementation) step, zero_grad.

Same AdamW settings (lr 6e-4, betas 0.9 / 0.95, weight decay 0.1), same batch (8 x 256 tokens),
fp32 and bf16 autocast. The sides alternate steps in one process so that other processes' load
falls on both alike; the best step counts (such load only ever adds time), after warm-up steps
(compilation included there). MFU = achieved model FLOPs per second (6N plus the attention
term per token, `gencycle.compute.training_flops`) over the matrix-multiply peak measured here
(the best of a few 2048^3 matmuls in the same precision).

    python -m benchmarks.pretrain_bench [--steps 6] [--batch 8] [--seq-len 256] [--precisions fp32 bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ADAMW = dict(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
PRESET = "llama-20m"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of the best of `repeat` (n x n) @ (n x n) products in `dtype` on this machine's CPU or GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeat + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def setup(folder: Path, batch: int, seq_len: int, steps: int):
    """The tokenizer, the Hugging Face folder of the model and (steps + warm-up) batches of blocks."""
    import gencycle
    from gencycle.data.corpora import load_corpus
    from gencycle.training.tokenizer_training import train_tokenizer_from_texts
    from gencycle.workflows.pretrain import encode, make_blocks, model_config
    texts = [d.text for d in load_corpus("chitchat", max_documents=3000).documents]
    tokenizer = train_tokenizer_from_texts(texts, "bpe", 8192, folder / "tokenizer", show_progress=False)
    config = model_config(PRESET, "decoder", tokenizer)
    torch.manual_seed(0)
    model = gencycle.Transformer(config)
    gencycle.save_pretrained(model, folder / "model")
    blocks = make_blocks(encode(tokenizer, texts), "decoder", seq_len, tokenizer, fixed=False)
    needed = batch * (steps + 4)
    if len(blocks) < needed:
        raise ValueError(f"{len(blocks)} blocks of text, {needed} needed: fewer steps or a smaller batch")
    return tokenizer, config, blocks[:needed]


def gencycle_step(folder: Path, blocks, batch: int, precision: str, compiled: bool, device: str):
    import gencycle
    from gencycle.training import TrainConfig
    from gencycle.workflows.pretrain import Batches, PretrainTrainer, next_token_step, target_tokens
    model = gencycle.load_model(folder / "model", device=device).train()
    step_fn = torch.compile(next_token_step) if compiled else next_token_step
    config = TrainConfig(max_steps=10_000, batch_size=batch, shuffle=False, progress=False, strategy="none",
                         precision=precision, max_grad_norm=1.0, **ADAMW)
    trainer = PretrainTrainer(model, config, blocks, collate_fn=Batches("decoder", None, 0), step_fn=step_fn,
                              weight_fn=target_tokens, device=device)
    return lambda: trainer.train_step()["loss"]


def transformers_step(folder: Path, blocks, batch: int, precision: str, device: str):
    import transformers
    transformers.logging.set_verbosity_error()
    model = transformers.LlamaForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    position = {"i": 0}

    def step():
        i = position["i"]
        position["i"] += 1
        rows = torch.stack([b.input_ids for b in blocks[i * batch:(i + 1) * batch]]).to(device)
        with autocast:
            loss = model(input_ids=rows[:, :-1], labels=rows[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def timed(step, device: str) -> tuple[float, float]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, loss


def run(folder: Path, blocks, batch: int, seq_len: int, steps: int, warmup: int, precision: str,
        device: str) -> dict[str, dict]:
    from gencycle.generation.compiled import has_cpp_compiler
    sides = {"gencycle": gencycle_step(folder, blocks, batch, precision, False, device)}
    if device == "cuda" or has_cpp_compiler():  # torch.compile builds C++ kernels on the CPU
        sides["gencycle compiled"] = gencycle_step(folder, blocks, batch, precision, True, device)
    sides["transformers"] = transformers_step(folder, blocks, batch, precision, device)
    first, times = {}, {name: [] for name in sides}
    for i in range(warmup + steps):
        for name, step in sides.items():
            seconds, loss = timed(step, device)
            first.setdefault(name, loss)
            if i >= warmup:
                times[name].append(seconds)
    tokens = batch * seq_len
    return {name: {"tokens_per_s": tokens / min(t), "median_tokens_per_s": tokens / statistics.median(t),
                   "first_loss": first[name]} for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    import os
    import tempfile
    from gencycle.compute import training_flops
    from .common import machine, table
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pretrain_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per side (the best counts)")
    parser.add_argument("--warmup", type=int, default=3, help="steps per side before measuring (compilation)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="gencycle-pretrain-bench-"))
    _, config, blocks = setup(folder, args.batch, args.seq_len, args.steps + args.warmup)
    flops_per_token = training_flops(config, 1, args.seq_len)["total"]
    n = sum(p.numel() for p in __import__("gencycle").load_model(folder / "model").parameters())
    rows, ratios = [], {}
    for precision in args.precisions:
        peak = matmul_peak(torch.float32 if precision == "fp32" else torch.bfloat16)
        results = run(folder, blocks, args.batch, args.seq_len, args.steps, args.warmup, precision, device)
        for name, r in results.items():
            mfu = r["tokens_per_s"] * flops_per_token / peak
            rows.append([precision, name, r["tokens_per_s"], r["median_tokens_per_s"], f"{100 * mfu:.1f}%",
                         f"{peak / 1e9:.0f}", f"{r['first_loss']:.4f}"])
        for name in [name for name in results if name != "transformers"]:
            ratios[f"{precision}: {name} / transformers"] = (results[name]["tokens_per_s"]
                                                           / results["transformers"]["tokens_per_s"])
    print(f"\n## Pretraining: {PRESET} ({n / 1e6:.1f}M parameters), batch {args.batch} x {args.seq_len} tokens, "
          f"AdamW, best of {args.steps} steps after {args.warmup} of warm-up, {device} ({machine()}); "
          f"load average at the start {load:.1f}\n")
    print(table(["precision", "side", "tokens/s (best)", "tokens/s (median)", "MFU", "matmul peak GFLOP/s",
                 "first-step loss"], rows))
    print(f"\nmodel FLOPs per token: {flops_per_token / 1e6:.1f}M (6N + attention at {args.seq_len} tokens)")
    for name, value in ratios.items():
        print(f"tokens/s {name}: {value:.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return {"rows": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
