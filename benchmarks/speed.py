"""gencycle vs `transformers.generate`: same process, same weights, greedy, 128 + 128 tokens.

For each model and batch size, every gencycle precision (fp32, bf16, int8, int4) and every
transformers precision (fp32, bf16: it has no int8 / int4 CPU path) runs the same prompts.
Runs alternate between the two libraries and the fastest of `repeat` runs counts, so that
load from other processes on the machine disturbs both sides alike.

    prefill tok/s  = batch * prompt_length / (one forward over the prompt)
    decode tok/s   = batch * (new_tokens - 1) / (generate time - prefill time)
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial

import torch

import gencycle

from .bandwidth import copy_bandwidth, weight_bytes_per_token
from .common import best_time, free, gpt2_folder, random_prompts, smollm2_folder, table, text_prompts

GENCYCLE_MODES = ("fp32", "bf16", "int8", "int4")
HF_MODES = ("fp32", "bf16")
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Run:
    model: str
    library: str
    mode: str
    batch: int
    prefill: float       # tokens / s
    decode: float        # new tokens / s (all rows together)
    seconds: float       # whole generate call
    tokens: torch.Tensor  # generated ids (batch, new_tokens)


def load_gencycle(folder, mode: str):
    if mode in DTYPE:
        return gencycle.load_model(folder, dtype=DTYPE[mode], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int4 -> int8 fallbacks (GPT-2 head: 50257 rows, not a multiple of 16)
        return gencycle.load_model(folder, device="cpu", quantize=mode)


def load_hf(folder, mode: str):
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPE[mode]).eval()


@torch.inference_mode()
def time_gencycle(model, ids, new_tokens: int, repeat: int, compiled=None):
    """compiled: the model's CompiledStep for the compiled runs, None for eager ones."""
    model.compiled_decoding = compiled

    def prefill():
        return model(ids, cache=model.new_cache(ids.shape[0], ids.shape[1] + 1), logits_to_keep=1)

    def generate():
        return gencycle.generate(model, ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    return best_time(prefill, repeat)[0], *best_time(generate, repeat)


@torch.inference_mode()
def time_hf(model, ids, new_tokens: int, repeat: int):
    mask = torch.ones_like(ids)

    def prefill():
        return model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

    def generate():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return best_time(prefill, repeat)[0], *best_time(generate, repeat)


def run_model(name: str, folder, prompts: torch.Tensor, batches, new_tokens: int, repeat: int,
              gencycle_modes=GENCYCLE_MODES, hf_modes=HF_MODES) -> tuple[list[Run], dict]:
    """All runs of one model; also returns its batch-1 bandwidth facts."""
    runs, facts = [], {}
    hf = {mode: load_hf(folder, mode) for mode in hf_modes}
    ours = {mode: load_gencycle(folder, mode) for mode in gencycle_modes}
    facts["weight_bytes"] = {mode: weight_bytes_per_token(model) for mode, model in ours.items()}
    compiled = {mode: gencycle.compile_decoding(model).compiled_decoding for mode, model in ours.items()}
    facts["compile_seconds"] = {}
    warm = prompts[:1, :16]
    for model in ours.values():
        time_gencycle(model, warm, 4, 1)
    for model in hf.values():
        time_hf(model, warm, 4, 1)
    for batch in batches:
        ids = prompts[:batch]
        T = ids.shape[1]
        for mode, model in ours.items():  # the first compiled call per shape compiles (cached on disk after)
            start = time.perf_counter()
            time_gencycle(model, ids, 2, 1, compiled[mode])
            facts["compile_seconds"][mode, batch] = time.perf_counter() - start
        jobs = [("transformers", mode, model, time_hf) for mode, model in hf.items()]
        jobs += [("gencycle", mode, model, time_gencycle) for mode, model in ours.items()]
        jobs += [("gencycle compiled", mode, model, partial(time_gencycle, compiled=compiled[mode]))
                 for mode, model in ours.items()]
        prefills, generates = {}, {}
        for _ in range(repeat):  # alternate the libraries; keep each one's fastest runs
            for library, mode, model, timer in jobs:
                prefill, seconds, out = timer(model, ids, new_tokens, 1)
                key = (library, mode)
                prefills[key] = min(prefill, prefills.get(key, float("inf")))
                if seconds < generates.get(key, (float("inf"),))[0]:
                    generates[key] = (seconds, out[:, T:])
        for key, (seconds, tokens) in generates.items():
            library, mode = key
            prefill = prefills[key]
            decode = batch * (new_tokens - 1) / max(seconds - prefill, 1e-9)
            runs.append(Run(name, library, mode, batch, batch * T / prefill, decode, seconds, tokens))
            print(f"  {name} batch {batch} {library:12s} {mode}: prefill {batch * T / prefill:7.0f} tok/s, "
                  f"decode {decode:6.1f} tok/s, generate {seconds:.2f} s", flush=True)
    del hf, ours
    free()
    return runs, facts


def find(runs, model, library, mode, batch) -> Run | None:
    return next((r for r in runs if (r.model, r.library, r.mode, r.batch) == (model, library, mode, batch)), None)


def report(runs: list[Run], facts: dict, bandwidth: float, batches) -> str:
    """The tables: absolute speeds, ratios to transformers, and the bandwidth bound."""
    out = []
    rows = [[r.model, r.library, r.mode, r.batch, r.prefill, r.decode, r.seconds] for r in runs]
    out.append(table(["model", "library", "weights", "batch", "prefill tok/s", "decode tok/s", "generate s"], rows))

    # ratios: each gencycle precision against the transformers precision it competes with
    against = {"fp32": "fp32", "bf16": "bf16", "int8": "fp32", "int4": "fp32"}
    rows = []
    for model in dict.fromkeys(r.model for r in runs):
        for library in ("gencycle", "gencycle compiled"):
            for mode, hf_mode in against.items():
                for batch in batches:
                    ours = find(runs, model, library, mode, batch)
                    theirs = find(runs, model, "transformers", hf_mode, batch)
                    if ours is None or theirs is None:
                        continue
                    same = (ours.tokens == theirs.tokens).all(dim=1).sum().item()
                    rows.append([model, f"{library} {mode} / transformers {hf_mode}", batch,
                                 f"{ours.decode / theirs.decode:.2f}x", f"{ours.prefill / theirs.prefill:.2f}x",
                                 f"{same}/{batch}"])
    out.append(table(["model", "decode speed ratio", "batch", "decode", "prefill", "same greedy tokens"], rows))

    rows = []
    for model, fact in facts.items():
        for mode, nbytes in fact["weight_bytes"].items():
            eager, ours = find(runs, model, "gencycle", mode, 1), find(runs, model, "gencycle compiled", mode, 1)
            if eager is None or ours is None:
                continue
            bound = bandwidth / nbytes
            rows.append([model, mode, f"{nbytes / 2**20:.0f} MiB", f"{bound:.1f}", f"{eager.decode:.1f}",
                         f"{100 * eager.decode / bound:.0f}%", f"{ours.decode:.1f}", f"{100 * ours.decode / bound:.0f}%"])
    out.append(f"Measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (bytes read + written per second).\n\n"
               + table(["model", "weights", "bytes read per token", "bound tok/s", "eager tok/s", "of bound",
                        "compiled tok/s", "of bound"], rows))
    compile_times = ", ".join(f"{model} {mode} batch {batch} {seconds:.0f} s" for model, fact in facts.items()
                              for (mode, batch), seconds in fact["compile_seconds"].items())
    out.append("First compiled call per shape (compiling, or loading the graph from torch's disk cache; "
               f"includes a 2-token generate): {compile_times}.")
    return "\n\n".join(out)


def main(repeat: int = 2, new_tokens: int = 128, prompt_length: int = 128, batches=(1, 8),
         models=("smollm2-135m", "gpt2-124m-random")) -> str:
    runs, facts = [], {}
    print("copy bandwidth ...", flush=True)
    bandwidth = copy_bandwidth()
    for name in models:
        print(f"{name}: preparing weights ...", flush=True)
        if name.startswith("smollm2"):
            folder, prompts = smollm2_folder(), text_prompts(max(batches), prompt_length)
        else:
            folder = gpt2_folder()
            prompts = random_prompts(max(batches), prompt_length, 50257)
        model_runs, facts[name] = run_model(name, folder, prompts, batches, new_tokens, repeat)
        runs += model_runs
    bandwidth = max(bandwidth, copy_bandwidth())  # measured again: other processes only ever lower it
    return report(runs, facts, bandwidth, batches)
