"""DPO throughput, memory and first-step loss: gencycle vs TRL's `DPOTrainer` (a test-only reference).

Same model folder (SmolLM2-135M-Instruct in the HF layout, with its tokenizer), same preference
pairs (real dialogue openings from the shipped chitchat set as prompts; chosen = the dialogue's
human-written summary, rejected = another dialogue's), in the same order (no shuffling), same
LoRA (rank 8, alpha 16, no dropout, q/k/v/o), same DPO (sigmoid, beta 0.1, reference = the policy
with its adapters off, computed every step), same optimizer settings (AdamW, lr 5e-5 constant, no
weight decay, clipping at 1.0), fp32 on CPU / bf16 autocast on a GPU, no gradient checkpointing
on either side (TRL's default turns it on; `--trl-checkpointing` adds that row).

Speed: both libraries in one process, their steps alternating: TRL runs its own loop (a callback
times each step, from its beginning to its end) and after each of its steps one gencycle step runs
(the real `Trainer.train_step`, timed by itself); tokens = the non-padding tokens of the step's 2B
rows; the first step of each warms up, the best of the others counts. Memory:
each library in its own process, two steps: peak RSS (and its rise over the process's RSS when
training started: what the step itself adds) on CPU, CUDA max allocated on a GPU.

    python -m benchmarks.dpo_bench [--model smollm2|tiny] [--batch 2] [--steps 4] [--prompt-lines 3]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

LORA = dict(rank=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
LR, BETA = 5e-5, 0.1


def model_folder(name: str) -> Path:
    """An HF model folder with tokenizer files (TRL loads the tokenizer from it)."""
    import gencycle
    from .common import SMOLLM2, _TMP, smollm2_folder
    if name == "smollm2":
        folder = smollm2_folder()
    else:
        folder = _TMP / "tiny-llama"
        if not (folder / "config.json").exists():
            torch.manual_seed(0)
            model = gencycle.Transformer(gencycle.preset("tiny-llama", vocab_size=49152, eos_token_id=2,
                                                         pad_token_id=2))
            gencycle.save_pretrained(model, folder)
    if not (folder / "tokenizer.json").exists():
        gencycle.load_tokenizer(SMOLLM2).save_pretrained(folder)
    return folder


def preference_rows(count: int, prompt_lines: int) -> list[dict]:
    """Real text: the first turns of shipped dialogues; chosen = that dialogue's summary, rejected = another's."""
    from gencycle.data.dialogsum import load_shipped
    dialogues = load_shipped("train")
    rows = []
    for i in range(count):
        example, other = dialogues[i % len(dialogues)], dialogues[(i + 7) % len(dialogues)]
        opening = "\n".join(example.dialogue.split("\n")[:prompt_lines])
        rows.append({"prompt": f"Summarize the conversation.\n{opening}\nSummary:",
                     "chosen": " " + example.summary, "rejected": " " + other.summary})
    return rows


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------ gencycle
def gencycle_stepper(folder: Path, rows: list[dict], batch: int, steps: int, device: str):
    """A function that runs one gencycle DPO step (the real `Trainer.train_step`) and returns
    (seconds, tokens, loss)."""
    import gencycle
    from gencycle.adapters import apply_lora
    from gencycle.alignment import DPOCollator, DPOStep, MetricsTrainer, load_preferences, tokenize_preference_pairs
    from gencycle.alignment.reward_model import rows_in
    from gencycle.training import TrainConfig
    tokenizer = gencycle.load_tokenizer(folder)
    model = gencycle.load_model(folder, device=device)
    apply_lora(model, rank=LORA["rank"], alpha=LORA["alpha"], dropout=0.0, target_modules=LORA["targets"])
    examples = tokenize_preference_pairs(load_preferences(rows), tokenizer, "decoder", max_length=4096)
    config = TrainConfig(max_steps=steps, batch_size=batch, lr=LR, schedule="constant", shuffle=False,
                         progress=False, strategy="none", max_grad_norm=1.0)
    trainer = MetricsTrainer(model, config, examples, collate_fn=DPOCollator(tokenizer.pad_token_id),
                             step_fn=DPOStep(beta=BETA, reference="adapters-off"), weight_fn=rows_in, device=device)

    def step() -> tuple[float, int, float]:
        _sync(device)
        start = time.perf_counter()
        record = trainer.train_step()
        _sync(device)
        return time.perf_counter() - start, record["tokens"], record["loss"]
    return step


def gencycle_run(folder: Path, rows: list[dict], batch: int, steps: int, device: str, monitor=None) -> dict:
    step = gencycle_stepper(folder, rows, batch, steps, device)
    if monitor is not None:
        monitor.start()
    times, tokens, losses = zip(*(step() for _ in range(steps)))
    return {"times": list(times), "tokens": list(tokens), "losses": list(losses)}


# ------------------------------------------------------------------ TRL
def trl_run(folder: Path, rows: list[dict], batch: int, steps: int, device: str, monitor=None,
            checkpointing: bool = False, after_step=None) -> dict:
    """TRL's DPOTrainer through its own loop; `after_step()` runs after each step, outside its timing."""
    import datasets
    import peft
    import transformers
    from trl import DPOConfig, DPOTrainer
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    times, tokens = [], []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            _sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            times.append(time.perf_counter() - self.start)
            if after_step is not None:
                after_step()

    class Counted(DPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *args, **kwargs)

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    lora = peft.LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                           target_modules=LORA["targets"], task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
                         lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                         logging_steps=1, report_to=[], save_strategy="no", beta=BETA, max_length=None,
                         bf16=device == "cuda", activation_checkpointing=checkpointing, use_cpu=device == "cpu",
                         train_sampling_strategy="sequential", dataloader_num_workers=0, disable_tqdm=True,
                         seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Counted(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                              processing_class=tokenizer, peft_config=lora, callbacks=[Timer()])
            trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no log dict per step
            if monitor is not None:
                monitor.start()
            trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"times": times, "tokens": tokens, "losses": losses}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


RUNS = {"gencycle": gencycle_run, "trl": trl_run, "trl+checkpointing": lambda *a, **k: trl_run(*a, **k,
                                                                                              checkpointing=True)}


def memory(library: str, folder: Path, rows: list[dict], batch: int) -> dict:
    """Peak memory of two training steps, in this process (the caller runs one process per library)."""
    from gencycle.training import MemoryMonitor
    device = device_name()
    monitor = MemoryMonitor(device)
    RUNS[library](folder, rows, batch, 2, device, monitor=monitor)
    peak = monitor.stop()
    return {"peak_mib": peak / 2**20, "rise_mib": (peak - monitor.baseline_bytes) / 2**20, "memory": monitor.kind}


def speed(folder: Path, rows: list[dict], batch: int, steps: int, device: str, checkpointing: bool) -> dict:
    """Both libraries in one process, their steps alternating (a gencycle step after each TRL step),
    so that load from other processes falls on both alike."""
    ours, theirs = gencycle_stepper(folder, rows, batch, steps, device), []
    run = trl_run(folder, rows, batch, steps, device, after_step=lambda: theirs.append(ours()))
    times, tokens, losses = zip(*theirs)
    runs = {"gencycle": {"times": list(times), "tokens": list(tokens), "losses": list(losses)}, "trl": run}
    if checkpointing:
        runs["trl+checkpointing"] = trl_run(folder, rows, batch, steps, device, checkpointing=True)
    return runs


def summary(run: dict) -> dict:
    rates = [t / s for t, s in zip(run["tokens"][1:], run["times"][1:])]  # the first step warms up
    return {"tokens_per_s": max(rates), "first_loss": run["losses"][0], "tokens": sum(run["tokens"]),
            "losses": run["losses"]}


def main(argv: list[str] | None = None) -> dict:
    from .common import machine, table
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dpo_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--batch", type=int, default=2, help="preference pairs per step (2 x batch rows)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    parser.add_argument("--prompt-lines", type=int, default=3, help="dialogue turns in each prompt")
    parser.add_argument("--trl-checkpointing", action="store_true",
                        help="also run TRL with its default gradient checkpointing")
    parser.add_argument("--memory-of", nargs=2, metavar=("LIBRARY", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = preference_rows(args.batch * (args.steps + 1), args.prompt_lines)
    if args.memory_of:
        library, folder = args.memory_of
        print(json.dumps(memory(library, Path(folder), rows, args.batch)))
        return {}
    folder = model_folder(args.model)  # converted once, before anything is measured
    device = device_name()
    libraries = ["gencycle", "trl"] + (["trl+checkpointing"] if args.trl_checkpointing else [])
    results = {library: summary(run) for library, run in speed(folder, rows, args.batch, args.steps + 1, device,
                                                                 args.trl_checkpointing).items()}
    for library in libraries:
        command = [sys.executable, "-m", "benchmarks.dpo_bench", "--memory-of", library, str(folder),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--prompt-lines", str(args.prompt_lines)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"{library} memory run failed:\n{done.stderr[-3000:]}")
        results[library].update(json.loads(done.stdout.strip().splitlines()[-1]))
    some = results["gencycle"]
    print(f"\n## DPO: {args.model}, LoRA r{LORA['rank']} q/k/v/o, {args.batch} pairs per step, best of {args.steps} "
          f"steps, {device} ({machine()})\n")
    print(table(["library", "tokens/s", f"peak MiB ({some['memory']})", "rise MiB", "first-step loss", "tokens"],
                [[name, r["tokens_per_s"], r["peak_mib"], r["rise_mib"], f"{r['first_loss']:.6f}", r["tokens"]]
                 for name, r in results.items()]))
    ours, ref = results["gencycle"], results["trl"]
    ratios = {"tokens/s gencycle / TRL": ours["tokens_per_s"] / ref["tokens_per_s"],
              "peak memory gencycle / TRL": ours["peak_mib"] / ref["peak_mib"],
              "memory rise gencycle / TRL": ours["rise_mib"] / max(ref["rise_mib"], 1e-9),
              "first-step loss - ln 2, gencycle": ours["first_loss"] - math.log(2),
              "first-step loss - ln 2, TRL": ref["first_loss"] - math.log(2)}
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.4f}" if "loss" in name else f"{name}: {value:.2f}")
    print(f"losses per step: gencycle {[round(x, 4) for x in ours['losses']]}, "
          f"TRL {[round(x, 4) for x in ref['losses']]}")
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
