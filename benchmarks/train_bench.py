"""Training throughput and memory: gencycle vs `transformers` (+ `peft`), full and LoRA fine-tuning.

Same model folder (SmolLM2-135M in the HF layout), same batches (the shipped dialogue-summary
train split through the "dialogsum" template, cut to `seq_len` tokens, loss on the summary
only), same optimizer (AdamW, clipping at 1.0), same LoRA (rank 8, alpha 16, q/k/v/o).
gencycle runs its real `Trainer.train_step`; the reference runs a bare loop
(forward with labels, backward, clip, AdamW step): the reference at its fastest.

Speed: both libraries in one process, their steps alternating; the best step counts.
Memory: each (library, method) in its own process, so the peak is that run's alone:
process RSS sampled during two steps on CPU, CUDA max allocated on a GPU.

    python -m benchmarks.train_bench [--model smollm2|tiny] [--batch 4] [--seq-len 128] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

LORA = dict(rank=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
RUNS = [("gencycle", "full"), ("transformers", "full"), ("gencycle", "lora"), ("transformers", "lora")]


def model_folder(name: str) -> Path:
    from .common import _TMP, smollm2_folder
    if name == "smollm2":
        return smollm2_folder()
    folder = _TMP / "tiny-llama"
    if not (folder / "config.json").exists():
        import gencycle
        torch.manual_seed(0)
        model = gencycle.Transformer(gencycle.preset("tiny-llama", vocab_size=49152, eos_token_id=2))
        gencycle.save_pretrained(model, folder)
    return folder


def examples(batch: int, seq_len: int, steps: int):
    """(steps + 1) * batch dialogue-summary examples, each cut to at most seq_len tokens."""
    import warnings
    import gencycle
    from gencycle.training import load_pairs, tokenize
    pairs = load_pairs("shipped", "train")[:batch * (steps + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most dialogues are cut to seq_len: expected here
        return tokenize(pairs, gencycle.load_tokenizer("smollm2-135m-instruct"), "decoder", max_length=seq_len)


def _gencycle_step(folder, method, data, batch, device):
    import gencycle
    from gencycle.training import TrainConfig, Trainer, collator_for
    model = gencycle.load_model(folder, device=device)
    if method == "lora":
        from gencycle.adapters import apply_lora
        apply_lora(model, rank=LORA["rank"], alpha=LORA["alpha"], dropout=0.0, target_modules=LORA["targets"])
    config = TrainConfig(max_steps=len(data) // batch, batch_size=batch, lr=1e-5, shuffle=False, progress=False,
                         strategy="none")
    trainer = Trainer(model, config, data, collate_fn=collator_for(model.config), device=device)
    return lambda: trainer.train_step()["loss"]


def _transformers_step(folder, method, data, batch, device):
    import transformers
    from gencycle.training import Collator
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).train()
    if method == "lora":
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                                           target_modules=LORA["targets"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda" or None)
    collate = Collator(pad_token_id=model.config.eos_token_id if model.config.pad_token_id is None
                       else model.config.pad_token_id)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    position = {"i": 0}

    def step():
        i = position["i"]
        position["i"] += 1
        inputs = {k: v.to(device) for k, v in collate(data[i * batch:(i + 1) * batch]).items()}
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def _rate(step, tokens: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def speed(method: str, folder: Path, batch: int, seq_len: int, steps: int) -> dict[str, dict]:
    """Both libraries in this process, their steps alternating, so that load from other processes
    falls on both alike; the best step counts (such load only ever adds time)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = examples(batch, seq_len, steps)
    runs = {"gencycle": _gencycle_step(folder, method, data, batch, device),
            "transformers": _transformers_step(folder, method, data, batch, device)}
    first = {library: step() for library, step in runs.items()}     # warm-up; the same batch for both
    rates = {library: [] for library in runs}
    for i in range(1, steps + 1):
        tokens = sum(len(e) for e in data[i * batch:(i + 1) * batch])
        for library, step in runs.items():
            rates[library].append(_rate(step, tokens, device))
    return {library: {"tokens_per_s": max(rates[library]), "first_loss": first[library], "device": device}
            for library in runs}


def memory(library: str, method: str, folder: Path, batch: int, seq_len: int) -> dict:
    """Peak memory of two training steps (the first allocates gradients and optimizer state),
    in a process of its own so that no other run's memory counts."""
    from gencycle.training import MemoryMonitor
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = examples(batch, seq_len, 1)
    make = _gencycle_step if library == "gencycle" else _transformers_step
    step = make(folder, method, data, batch, device)
    monitor = MemoryMonitor(device).start()
    step()
    step()
    return {"peak_mib": monitor.stop() / 2**20, "memory": monitor.kind}


def main(argv: list[str] | None = None) -> dict:
    """Speed of both libraries (alternating in one process), then the peak memory of each
    (library, method) in its own process; prints the table and the ratios."""
    from .common import machine, table
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--memory-of", nargs=3, metavar=("LIBRARY", "METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        library, method, folder = args.memory_of
        print(json.dumps(memory(library, method, Path(folder), args.batch, args.seq_len)))
        return {}
    folder = model_folder(args.model)  # converted once, before anything is measured
    results = {}
    for method in ("full", "lora"):
        for library, result in speed(method, folder, args.batch, args.seq_len, args.steps).items():
            results[(library, method)] = {"library": library, "method": method, **result}
    for library, method in RUNS:
        command = [sys.executable, "-m", "benchmarks.train_bench", "--memory-of", library, method, str(folder),
                   "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"{library} {method} failed:\n{done.stderr[-3000:]}")
        results[(library, method)].update(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = [[r["library"], r["method"], r["tokens_per_s"], r["peak_mib"], r["first_loss"]]
            for r in (results[key] for key in RUNS)]
    some = next(iter(results.values()))
    print(f"\n## Training: {args.model}, batch {args.batch} x {args.seq_len} tokens, best of {args.steps} steps, "
          f"{some['device']} ({machine()})\n")
    print(table(["library", "method", "tokens/s", f"peak MiB ({some['memory']})", "first-step loss"], rows))
    ratios = {f"tokens/s gencycle / transformers, {m}": results[("gencycle", m)]["tokens_per_s"]
              / results[("transformers", m)]["tokens_per_s"] for m in ("full", "lora")}
    for library in ("gencycle", "transformers"):
        ratios[f"peak memory LoRA / full, {library}"] = (results[(library, "lora")]["peak_mib"]
                                                         / results[(library, "full")]["peak_mib"])
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    return {"results": list(results.values()), "ratios": ratios}


if __name__ == "__main__":
    main()
