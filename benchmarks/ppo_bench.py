"""PPO on SmolLM2-135M-Instruct + LoRA: the step time split into rollout / scoring / update, and the
peak memory of LoRA PPO against LoRA fine-tuning alone on the same model, batch and lengths.

    python -m benchmarks.ppo_bench [--batch 8] [--new-tokens 32] [--steps 4] [--reward-model DIR]

Set-up (the detox lab's): SmolLM2-135M-Instruct in fp32, LoRA rank 8 / alpha 16 on q, k, v, o;
prompts from the lab (real chat contexts, chat template); the reward model is the lab's (a
MiniLM classifier, --reward-model, default runs/detox-lab/rm/model when it exists), else a fresh
two-label head on the packaged all-MiniLM-L6-v2 (the same size and cost; its scores mean nothing).
A PPO step: rollout (sampling `--new-tokens` with the adapters on, then one forward each for the
policy's log-probs / values and the reference's, adapters off), scoring (decode, re-encode, the
reward model), update (4 PPO epochs x mini-batches of 4 rows: 8 optimizer steps).

Speed: `--steps` PPO steps after one warm-up step, in this process; the fastest and the median
of each part. Memory: each run in its own process, so only its own peak counts: process RSS
sampled during two PPO steps (policy + value head + adapters-off reference + reward model +
rollout buffers) and during two LoRA fine-tuning steps of the same batch (prompt + `--new-tokens`
completion tokens, the loss on the completion); CUDA max allocated on a GPU. The goal is LoRA
PPO <= 1.5 x LoRA fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LAB_REWARD_MODEL = ROOT / "runs" / "detox-lab" / "rm" / "model"
LORA = dict(rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
PARTS = ("time/generate", "time/forward", "time/rollout", "time/score", "time/update")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def policy_and_prompts(batch: int):
    import gencycle
    from gencycle.adapters import apply_lora
    from gencycle.workflows.rlhf import PromptsConfig, prompt_records, tokenize_prompts
    lm = gencycle.load_model("smollm2-135m-instruct", device=device())
    tokenizer = gencycle.load_tokenizer("smollm2-135m-instruct")
    rows, _ = prompt_records("detox")
    prompts = tokenize_prompts(rows[:batch * 16], tokenizer, PromptsConfig(chat_template=True))
    apply_lora(lm, **LORA)
    return lm, tokenizer, prompts, rows


def reward_model(folder: str | None):
    """The lab's reward model (its raw non-toxic logit), or a fresh head on the packaged MiniLM."""
    from gencycle.alignment.rewards import ClassifierReward, make_reward
    path = Path(folder) if folder else LAB_REWARD_MODEL
    if path.is_dir():
        return make_reward(path, label="non-toxic", device=device()), f"{path} (label non-toxic, logit)"
    import gencycle
    from gencycle.model.heads import SequenceClassifier
    torch.manual_seed(0)
    backbone = gencycle.load_model("all-minilm-l6-v2", device=device())
    classifier = SequenceClassifier(backbone, 2, pooling="mean").eval()
    return ClassifierReward(classifier, gencycle.load_tokenizer("all-minilm-l6-v2"), label=0), \
        "all-MiniLM-L6-v2 with a fresh 2-label head (no trained reward model found)"


def ppo_trainer(batch: int, new_tokens: int, steps: int, folder: str | None):
    from gencycle.alignment.ppo import PPOConfig, PPOTrainer
    from gencycle.model.heads import ValueHead
    from gencycle.training import TrainConfig
    lm, tokenizer, prompts, _ = policy_and_prompts(batch)
    reward, name = reward_model(folder)
    config = TrainConfig(max_steps=steps + 1, batch_size=batch, lr=1e-4, schedule="constant", progress=False,
                         strategy="none")
    trainer = PPOTrainer(ValueHead(lm), config, PPOConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                          mini_batch_size=4, ppo_epochs=4),
                         prompts, reward, tokenizer, device=device())
    return trainer, name


def finetune_step(batch: int, new_tokens: int):
    """A LoRA fine-tuning step on the same prompts, each followed by `new_tokens` completion tokens
    (the real reply, cut or repeated to that length)."""
    from gencycle.training import TrainConfig, Trainer, collator_for
    from gencycle.training.data import IGNORE_INDEX, Example
    lm, tokenizer, prompts, rows = policy_and_prompts(batch)
    examples = []
    for prompt, row in zip(prompts, rows):
        reply = tokenizer.encode(row["reply"], add_special_tokens=False) or [tokenizer.eos_token_id]
        completion = (reply * (new_tokens // len(reply) + 1))[:new_tokens - 1] + [tokenizer.eos_token_id]
        examples.append(Example(prompt.ids + completion, [IGNORE_INDEX] * len(prompt.ids) + completion))
    config = TrainConfig(max_steps=4, batch_size=batch, lr=1e-4, shuffle=False, progress=False, strategy="none")
    trainer = Trainer(lm, config, examples, collate_fn=collator_for(lm.config), device=device())
    return lambda: trainer.train_step()


def speed(batch: int, new_tokens: int, steps: int, folder: str | None) -> dict:
    trainer, name = ppo_trainer(batch, new_tokens, steps, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = [trainer.train_step() for _ in range(steps + 1)][1:]  # the first step warms up
    out = {"reward_model": name, "device": device()}
    for part in PARTS:
        values = [r[part] for r in records]
        out[part] = {"min": min(values), "median": statistics.median(values)}
    total = [sum(r[p] for p in ("time/rollout", "time/score", "time/update")) for r in records]
    out["time/step"] = {"min": min(total), "median": statistics.median(total)}
    out["response_length"] = statistics.mean(r["response_length"] for r in records)
    return out


def memory(kind: str, batch: int, new_tokens: int, folder: str | None) -> dict:
    """Peak memory of two steps of `kind` ("ppo" or "finetune"), in this process alone."""
    from gencycle.training import MemoryMonitor
    if kind == "ppo":
        trainer, _ = ppo_trainer(batch, new_tokens, 2, folder)
        step = trainer.train_step
    else:
        step = finetune_step(batch, new_tokens)
    monitor = MemoryMonitor(device()).start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step()
        step()
    return {"peak_mib": monitor.stop() / 2**20, "memory": monitor.kind}


def main(argv: list[str] | None = None) -> dict:
    from .common import machine, table
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ppo_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reward-model", help="reward model folder (default: the lab's, when trained)")
    parser.add_argument("--memory-of", choices=["ppo", "finetune"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        print(json.dumps(memory(args.memory_of, args.batch, args.new_tokens, args.reward_model)))
        return {}
    times = speed(args.batch, args.new_tokens, args.steps, args.reward_model)
    peaks = {}
    for kind in ("ppo", "finetune"):
        command = [sys.executable, "-m", "benchmarks.ppo_bench", "--memory-of", kind, "--batch", str(args.batch),
                   "--new-tokens", str(args.new_tokens)] + (["--reward-model", args.reward_model]
                                                             if args.reward_model else [])
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"the {kind} memory run failed:\n{done.stderr[-3000:]}")
        peaks[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n## PPO: SmolLM2-135M-Instruct + LoRA (r{LORA['rank']}, q/k/v/o), batch {args.batch}, "
          f"{args.new_tokens} new tokens, {args.steps} steps after a warm-up, {times['device']} ({machine()})")
    print(f"reward model: {times['reward_model']}\n")
    names = {"time/generate": "rollout: sampling", "time/forward": "rollout: policy + reference forwards",
             "time/rollout": "rollout (total)", "time/score": "scoring (decode, re-encode, reward model)",
             "time/update": "update (4 epochs x 2 mini-batches of 4)", "time/step": "PPO step"}
    rows = [[names[k], times[k]["min"], times[k]["median"], times[k]["median"] / times["time/step"]["median"]]
            for k in (*PARTS, "time/step")]
    print(table(["part", "fastest s", "median s", "share of the step (median)"], rows))
    kind = peaks["ppo"]["memory"]
    print()
    print(table(["run", f"peak MiB ({kind})"], [["LoRA PPO (policy + value head + reference + reward model)",
                                                   peaks["ppo"]["peak_mib"]],
                                                  ["LoRA fine-tuning alone", peaks["finetune"]["peak_mib"]]]))
    ratio = peaks["ppo"]["peak_mib"] / peaks["finetune"]["peak_mib"]
    print(f"\npeak memory LoRA PPO / LoRA fine-tuning: {ratio:.2f} (goal <= 1.5: {'met' if ratio <= 1.5 else 'not met'})")
    return {"times": times, "peaks": peaks, "ratio": ratio}


if __name__ == "__main__":
    main()
