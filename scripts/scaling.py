"""Scaling laws you can watch: a grid of small decoders trained on one corpus, L(N, D) fitted to it.

    python scripts/scaling.py [--out runs/scaling] [--plot docs/scaling.png] [--data austen]

Five Llama-style decoders (RoPE, RMSNorm, SwiGLU; 2 to 5 layers, hidden 32 to 128) are each trained
on three token budgets (262k, 524k and 1.05M tokens: about a quarter, half and one pass of Austen)
with the training loop of `gencycle pretrain`: a cosine schedule sized to the budget, AdamW, the
same blocks of 128 tokens in the same order. The final validation loss of each run (held-out
chapters) is fitted with Chinchilla's approach-3 form (Hoffmann et al. 2022)

    L(N, D) = E + A / N^alpha + B / D^beta

minimising the Huber loss (delta 1e-3) of log L over a grid of starting points with L-BFGS, as
they did. N counts the non-embedding parameters (Kaplan et al. 2020: at these sizes the token
embedding, tied to the output layer, would be most of the count) and compute is C = 6 N D. The
plot shows loss against compute for every run, the fitted frontier (the least loss the fit
predicts at each compute, at N_opt = G (C/6)^(beta/(alpha+beta))) and the compute-optimal
points; the fit is printed beside Chinchilla's. Finished runs are kept in OUT/results.json, so an
interrupted grid continues where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

SIZES = [(32, 2), (48, 3), (64, 4), (96, 4), (128, 5)]   # (hidden, layers); head_dim 16
BUDGETS = [2 ** 18, 2 ** 19, 2 ** 20]                      # training tokens
BLOCK, BATCH, VOCAB = 128, 16, 2048
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def model_config(hidden: int, layers: int, tokenizer):
    from gencycle.checkpoints import llama
    ffn = (8 * hidden // 3 + 7) // 8 * 8  # SwiGLU's 8/3 of the hidden size, a multiple of 8
    config = llama.config_from_hf(dict(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                       num_attention_heads=hidden // 16, intermediate_size=ffn,
                                       max_position_embeddings=BLOCK, tie_word_embeddings=True))
    return config.replace(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)


def non_embedding_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)


def data(source: str, out: Path):
    """The tokenizer (BPE, trained on the training split once) and the training / validation blocks."""
    from gencycle.tokenizer import load_tokenizer
    from gencycle.training.tokenizer_training import train_tokenizer_from_texts
    from gencycle.workflows.pretrain import encode, load_split, make_blocks, CorpusConfig
    corpus, train, validation = load_split(source, CorpusConfig(validation_fraction=0.05))
    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        train_tokenizer_from_texts(train, "bpe", VOCAB, folder, model_max_length=BLOCK, show_progress=False)
    tokenizer = load_tokenizer(folder)
    train_blocks = make_blocks(encode(tokenizer, train), "decoder", BLOCK, tokenizer, fixed=False)
    eval_blocks = make_blocks(encode(tokenizer, validation), "decoder", BLOCK, tokenizer, fixed=True, limit=256)
    return corpus, tokenizer, train_blocks, eval_blocks


def train_one(hidden: int, layers: int, tokens: int, tokenizer, train_blocks, eval_blocks, lr: float) -> dict:
    from gencycle.model import Transformer
    from gencycle.training import TrainConfig, seed_everything
    from gencycle.workflows.pretrain import Batches, PretrainTrainer, next_token_step, target_tokens
    seed_everything(0)
    model = Transformer(model_config(hidden, layers, tokenizer))
    steps = tokens // (BATCH * BLOCK)
    config = TrainConfig(max_steps=steps, batch_size=BATCH, lr=lr, weight_decay=0.1, betas=(0.9, 0.95),
                         warmup_steps=max(5, steps // 20), schedule="cosine", min_lr_ratio=0.1, progress=False,
                         strategy="none", eval_batch_size=64)
    trainer = PretrainTrainer(model, config, train_blocks, eval_data=eval_blocks,
                              collate_fn=Batches("decoder", tokenizer, 0), step_fn=next_token_step,
                              weight_fn=target_tokens, device="cpu")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    n = non_embedding_parameters(model)
    return {"hidden": hidden, "layers": layers, "params": n, "total_params": model.num_parameters(),
            "tokens": trainer.tokens_seen, "compute": 6 * n * trainer.tokens_seen, "steps": steps,
            "loss": trainer.evaluate(), "train_loss": trainer.history[-1]["loss"], "seconds": seconds}


# ------------------------------------------------------------------ the fit
def predict(params: dict, n, d):
    return params["E"] + params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"]


def fit(runs: list[dict]) -> dict:
    """Chinchilla's approach 3: minimise sum Huber_1e-3(LSE(a - alpha log N, b - beta log D, e) - log L)
    over (a, b, e, alpha, beta) with L-BFGS from a grid of starting points; A = e^a, B = e^b, E = e^e."""
    log_n = torch.tensor([math.log(r["params"]) for r in runs], dtype=torch.float64)
    log_d = torch.tensor([math.log(r["tokens"]) for r in runs], dtype=torch.float64)
    log_l = torch.tensor([math.log(r["loss"]) for r in runs], dtype=torch.float64)

    def objective(x):
        a, b, e, alpha, beta = x
        lse = torch.logsumexp(torch.stack([a - alpha * log_n, b - beta * log_d, e.expand_as(log_n)]), 0)
        return torch.nn.functional.huber_loss(lse, log_l, delta=1e-3, reduction="sum")

    best = None
    for start in itertools.product([0.0, 5.0, 10.0], [0.0, 5.0, 10.0], [-1.0, 0.0, 1.0], [0.2, 0.5], [0.2, 0.5]):
        x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            value = objective(x)
            value.backward()
            return value
        try:
            optimizer.step(closure)
        except RuntimeError:
            continue
        value = objective(x).item()
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, x.detach().tolist())
    a, b, e, alpha, beta = best[1]
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta,
            "huber": best[0]}


def optimum(params: dict, compute: float) -> tuple[float, float, float]:
    """(N_opt, D_opt, L) minimising L(N, D) at C = 6 N D: N_opt = G (C/6)^(beta/(alpha+beta))."""
    alpha, beta = params["alpha"], params["beta"]
    g = (alpha * params["A"] / (beta * params["B"])) ** (1 / (alpha + beta))
    n = g * (compute / 6) ** (beta / (alpha + beta))
    d = compute / (6 * n)
    return n, d, predict(params, n, d)


def plot(runs: list[dict], params: dict, path: Path, corpus: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    sizes = sorted({r["params"] for r in runs})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    for n, color in zip(sizes, colors):
        mine = sorted((r for r in runs if r["params"] == n), key=lambda r: r["compute"])
        ax.plot([r["compute"] for r in mine], [r["loss"] for r in mine], "o-", color=color,
                label=f"N = {n / 1e3:,.0f}k", markersize=6)
    low, high = min(r["compute"] for r in runs) / 3, max(r["compute"] for r in runs) * 10
    grid = np.geomspace(low, high, 200)
    ax.plot(grid, [optimum(params, c)[2] for c in grid], "k--", linewidth=1.2, label="fitted frontier")
    for c in np.geomspace(low * 3, high / 3, 4):
        n, d, loss = optimum(params, c)
        ax.plot(c, loss, "*", color="crimson", markersize=13, zorder=5)
        ax.annotate(f"N={n / 1e3:,.0f}k\nD={d / 1e6:.2g}M", (c, loss), textcoords="offset points", xytext=(6, 6),
                    fontsize=7, color="crimson")
    ax.plot([], [], "*", color="crimson", markersize=10, label="compute-optimal (fit)")
    ax.set(xscale="log", xlabel="compute C = 6 N D (FLOPs, N non-embedding)",
           ylabel="final validation loss (nats / token)",
           title=f"Decoders on {corpus}: L = {params['E']:.2f} + {params['A']:.3g}/N^{params['alpha']:.2f}"
                 f" + {params['B']:.3g}/D^{params['beta']:.2f}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(runs: list[dict], params: dict) -> str:
    lines = ["| hidden x layers | N (non-embedding) | D tokens | C = 6ND | final validation loss | train time |",
             "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["params"], r["tokens"])):
        lines.append(f"| {r['hidden']} x {r['layers']} | {r['params']:,} | {r['tokens']:,} | {r['compute']:.2e} | "
                     f"{r['loss']:.4f} | {r['seconds']:.0f} s |")
    k = CHINCHILLA
    rows = [("fitted here", params), ("Chinchilla (Hoffmann et al. 2022)", k)]
    lines += ["", "| | E | A | B | alpha | beta | N_opt ~ C^a, a = beta/(alpha+beta) | D_opt ~ C^b, b |",
              "|---|---|---|---|---|---|---|---|"]
    for name, p in rows:
        total = p["alpha"] + p["beta"]
        lines.append(f"| {name} | {p['E']:.3f} | {p['A']:.4g} | {p['B']:.4g} | {p['alpha']:.3f} | {p['beta']:.3f} | "
                     f"{p['beta'] / total:.3f} | {p['alpha'] / total:.3f} |")
    biggest = max(r["compute"] for r in runs)
    n, d, loss = optimum(params, biggest)
    residuals = [abs(predict(params, r["params"], r["tokens"]) - r["loss"]) for r in runs]
    lines += ["", f"At the grid's largest compute ({biggest:.2e} FLOPs) the fit's optimum is N = {n:,.0f}, "
              f"D = {d:,.0f} ({d / n:.1f} tokens per parameter), predicted loss {loss:.3f}. "
              f"Mean absolute residual of the fit: {sum(residuals) / len(residuals):.4f} nats."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/scaling.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="austen", help="corpus name or text files (default: austen)")
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--plot", type=Path, default=Path("docs/scaling.png"))
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--sizes", type=int, nargs="+", help="HIDDEN LAYERS pairs instead of the grid's five")
    parser.add_argument("--budgets", type=int, nargs="+", help="token budgets instead of the grid's three")
    args = parser.parse_args(argv)
    sizes = list(zip(args.sizes[::2], args.sizes[1::2])) if args.sizes else SIZES
    budgets = args.budgets or BUDGETS
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    runs = json.loads(store.read_text()) if store.exists() else []
    corpus, tokenizer, train_blocks, eval_blocks = data(args.data, args.out)
    print(f"{corpus.name}: {len(train_blocks):,} training and {len(eval_blocks)} validation blocks of {BLOCK} "
          f"tokens; {len(sizes)} sizes x {len(budgets)} budgets; {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    started = time.perf_counter()
    for (hidden, layers), tokens in itertools.product(sizes, budgets):
        if any(r["hidden"] == hidden and r["layers"] == layers and abs(r["tokens"] - tokens) < BATCH * BLOCK
               for r in runs):  # this budget's run is done (a larger budget's run is not it)
            continue
        if tokens > len(train_blocks) * BLOCK:
            print(f"warning: {tokens:,} tokens is more than one pass over the corpus", file=sys.stderr)
        run = train_one(hidden, layers, tokens, tokenizer, train_blocks, eval_blocks, args.lr)
        runs.append(run)
        store.write_text(json.dumps(runs, indent=1) + "\n")
        print(f"hidden {hidden} x {layers} layers, N = {run['params']:,}, D = {run['tokens']:,}: validation loss "
              f"{run['loss']:.4f} in {run['seconds']:.0f} s ({run['tokens'] / run['seconds']:,.0f} tokens/s)",
              flush=True)
    runs = [r for r in runs if (r["hidden"], r["layers"]) in sizes and any(
        abs(r["tokens"] - t) < BATCH * BLOCK for t in budgets)]
    params = fit(runs)
    (args.out / "fit.json").write_text(json.dumps(params, indent=1) + "\n")
    plot(runs, params, args.plot, corpus.name)
    print()
    print(report(runs, params))
    print(f"\nthis call: {(time.perf_counter() - started) / 60:.1f} min; all runs' training time "
          f"{sum(r['seconds'] for r in runs) / 60:.1f} min; load average {os.getloadavg()[0]:.1f}; wrote {args.plot}")


if __name__ == "__main__":
    main()
