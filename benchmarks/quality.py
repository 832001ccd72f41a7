"""What quantization costs in quality, measured on real text rather than assumed.

For SmolLM2-135M-Instruct in fp32, bf16, int8 and int4, on the shipped chitchat dialogues (test
split, 55 real conversations):

- perplexity: exp(mean next-token negative log-likelihood), each dialogue one sequence (as
  `gencycle.evaluation.metrics.perplexity` computes it);
- next-token agreement with fp32: the share of positions whose arg-max prediction is fp32's;
- greedy agreement with fp32: 8 prompts (a dialogue's first 64 tokens) continued greedily for 32
  tokens; the share of generated tokens equal to fp32's at the same position, and how many tokens
  come out before the first difference (mean over prompts).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

import gencycle

from .common import SMOLLM2, dialogue_text, table

MODES = ("fp32", "bf16", "int8", "int4")


def load(mode: str):
    if mode in ("fp32", "bf16"):
        return gencycle.load_model(SMOLLM2, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[mode], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gencycle.load_model(SMOLLM2, device="cpu", quantize=mode)


@torch.inference_mode()
def score(model, texts: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """Perplexity over the texts, and each text's arg-max predictions."""
    nll, count, predictions = 0.0, 0, []
    for ids in texts:
        logits = model(ids[None]).logits[0, :-1].float()          # (T-1, V)
        nll += F.cross_entropy(logits, ids[1:], reduction="sum").item()
        count += ids.numel() - 1
        predictions.append(logits.argmax(-1))
    return math.exp(nll / count), predictions


@torch.inference_mode()
def continue_greedily(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = gencycle.generate(model, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out[:, prompts.shape[1]:]


def main(modes=MODES, max_texts: int = 55, max_tokens: int = 512, prompts: int = 8, prompt_length: int = 64,
         new_tokens: int = 32) -> str:
    tokenizer = gencycle.load_tokenizer(SMOLLM2)
    texts = [torch.tensor(tokenizer.encode(t, add_special_tokens=False)[:max_tokens])
             for t in dialogue_text("test")[:max_texts]]
    texts = [t for t in texts if t.numel() > 1]
    starts = torch.stack([t[:prompt_length] for t in texts if t.numel() >= prompt_length][:prompts])
    results = {}
    for mode in modes:
        print(f"  quality {mode} ...", flush=True)
        model = load(mode)
        ppl, predictions = score(model, texts)
        results[mode] = (ppl, predictions, continue_greedily(model, starts, new_tokens))
        del model
    ref_predictions, ref_greedy = results["fp32"][1], results["fp32"][2]
    rows = []
    for mode, (ppl, predictions, greedy) in results.items():
        same = sum((a == b).sum().item() for a, b in zip(predictions, ref_predictions))
        total = sum(a.numel() for a in ref_predictions)
        equal = greedy == ref_greedy                                   # (prompts, new_tokens)
        prefix = equal.int().cumprod(dim=1).sum(dim=1).float().mean().item()
        rows.append([mode, f"{ppl:.3f}", f"{100 * same / total:.1f}%", f"{100 * equal.float().mean().item():.1f}%",
                     f"{prefix:.1f} / {new_tokens}"])
    n_tokens = sum(t.numel() for t in texts)
    return (f"SmolLM2-135M-Instruct on the shipped chitchat dialogues (test split: {len(texts)} dialogues, "
            f"{n_tokens} tokens):\n\n"
            + table(["weights", "perplexity", "next-token agreement with fp32",
                     "greedy tokens equal to fp32", "tokens before first difference"], rows))
