"""gencycle vs `transformers.generate` (and llama.cpp): same process, same weights, greedy, 128 + 128 tokens.

For each model and batch size, every gencycle precision (fp32, bf16, int8, int4) and every
transformers precision (fp32, bf16: it has no int8 / int4 CPU path) runs the same prompts.
Runs alternate between the libraries and the fastest of `repeat` runs counts, so that load from
other processes on the machine disturbs both sides alike.

    prefill tok/s  = batch * prompt_length / (one forward over the prompt, as generate runs it)
    decode tok/s   = batch * (new_tokens - 1) / (generate time - prefill time)

gencycle decodes with compiled steps (`compile_decoding`; by default ahead of time, as
`gencycle chat --compile` does, `packages=None` for torch.compile in the process), and also
eagerly with `eager=True`; transformers decodes eagerly (its CPU path). The prefill is
eager in both. `report` prints the issue-17 table (prefill at batch 1 and 8, compiled decoding
at batch 1 and 8, one row per precision) and `goals` each goal's ratio.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

import gencycle

from .bandwidth import copy_bandwidth, weight_bytes_per_token
from .common import best_time, free, gpt2_folder, random_prompts, smollm2_folder, table, text_prompts

GENCYCLE_MODES = ("fp32", "bf16", "int8", "int4")
HF_MODES = ("fp32", "bf16")
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODE_NAMES = {"int4": "int4 (group 32)"}


@dataclass
class Run:
    model: str
    library: str          # "transformers", "gencycle" (eager decoding), "gencycle compiled"
    mode: str
    batch: int
    prefill: float       # tokens / s
    decode: float        # new tokens / s (all rows together)
    seconds: float       # whole generate call
    tokens: torch.Tensor  # generated ids (batch, new_tokens)


def load_gencycle(folder, mode: str):
    """int8 / int4 with what the inference defaults put around the quantized layers for compiled
    decoding (bf16 where it is native, generation/defaults.py), as `gencycle generate --quantize` runs."""
    if mode in DTYPE:
        return gencycle.load_model(folder, dtype=DTYPE[mode], device="cpu")
    from gencycle.generation.defaults import inference_defaults
    around = inference_defaults(device="cpu", quantize=mode, compile=True).dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int4 -> int8 fallbacks (GPT-2 head: 50257 rows, not a multiple of 16)
        return gencycle.load_model(folder, device="cpu", quantize=mode, dtype=around)


def load_hf(folder, mode: str):
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPE[mode]).eval()


@torch.inference_mode()
def time_gencycle(model, ids, new_tokens: int, repeat: int, compiled=None):
    """compiled: the model's CompiledStep for the compiled runs, None for eager ones.
    Returns (best prefill seconds, best generate seconds, the generated ids)."""
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
              gencycle_modes=GENCYCLE_MODES, hf_modes=HF_MODES, eager: bool = False,
              packages="auto") -> tuple[list[Run], dict]:
    """All runs of one model; also returns its batch-1 bandwidth facts and compile times."""
    runs, facts = [], {}
    hf = {mode: load_hf(folder, mode) for mode in hf_modes}
    ours = {mode: load_gencycle(folder, mode) for mode in gencycle_modes}
    facts["weight_bytes"] = {mode: weight_bytes_per_token(model) for mode, model in ours.items()}
    compiled = {mode: gencycle.compile_decoding(model, packages=packages).compiled_decoding
                for mode, model in ours.items()}
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
            print(f"  {name} {mode} batch {batch}: compiled step ready in {facts['compile_seconds'][mode, batch]:.0f} s",
                  flush=True)
        jobs = [("transformers", mode, model, lambda m, i, n, r: time_hf(m, i, n, r)) for mode, model in hf.items()]
        jobs += [("gencycle compiled", mode, model, lambda m, i, n, r, s=compiled[mode]: time_gencycle(m, i, n, r, s))
                 for mode, model in ours.items()]
        if eager:
            jobs += [("gencycle", mode, model, time_gencycle) for mode, model in ours.items()]
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
            print(f"  {name} batch {batch} {library:17s} {mode}: prefill {batch * T / prefill:7.0f} tok/s, "
                  f"decode {decode:6.1f} tok/s, generate {seconds:.2f} s", flush=True)
    for model in ours.values():
        model.compiled_decoding = None
    del hf, ours, compiled
    free()
    return runs, facts


def find(runs, model, library, mode, batch) -> Run | None:
    return next((r for r in runs if (r.model, r.library, r.mode, r.batch) == (model, library, mode, batch)), None)


def _cell(run: Run | None, field: str) -> str:
    return "" if run is None else f"{getattr(run, field):.1f}" if getattr(run, field) < 100 else f"{getattr(run, field):.0f}"


def issue_table(runs: list[Run], model: str, llama: dict | None) -> str:
    """One row per precision: prefill at batch 1 and 8, compiled decoding at batch 1 and 8 (eager for
    transformers), as issue 17 gives it."""
    headers = ["weights", "prefill tok/s, batch 1", "prefill tok/s, batch 8", "decode tok/s, batch 1 (compiled)",
               "decode tok/s, batch 8 (compiled)"]
    rows = []
    hf = [find(runs, model, "transformers", mode, b) for mode in HF_MODES for b in (1, 8)]
    if any(hf):
        def pair(batch, field):
            return " / ".join(_cell(find(runs, model, "transformers", mode, batch), field) for mode in HF_MODES)
        rows.append(["transformers fp32 / bf16", pair(1, "prefill"), pair(8, "prefill"), pair(1, "decode") + " (eager)",
                     pair(8, "decode") + " (eager)"])
    for mode in GENCYCLE_MODES:
        cells = [_cell(find(runs, model, "gencycle compiled", mode, 1), "prefill"),
                 _cell(find(runs, model, "gencycle compiled", mode, 8), "prefill"),
                 _cell(find(runs, model, "gencycle compiled", mode, 1), "decode"),
                 _cell(find(runs, model, "gencycle compiled", mode, 8), "decode")]
        if any(cells):
            rows.append([f"gencycle {MODE_NAMES.get(mode, mode)}", *cells])
    if llama:
        rows.append(["llama.cpp, Q4_1 file (batch 1 only)", f"{llama['prefill']:.0f}", "", f"{llama['decode']:.1f}", ""])
    return table(headers, rows)


def report(runs: list[Run], facts: dict, bandwidth: float, batches, llama: dict | None = None) -> str:
    """The tables: the issue's summary, absolute speeds, ratios to transformers, the bandwidth bound."""
    out = []
    for model in dict.fromkeys(r.model for r in runs):
        out.append(f"{model}:\n\n" + issue_table(runs, model, llama if model.startswith("smollm2") else None))
    rows = [[r.model, r.library, r.mode, r.batch, r.prefill, r.decode, r.seconds] for r in runs]
    out.append("Every run:\n\n" + table(["model", "library", "weights", "batch", "prefill tok/s", "decode tok/s",
                                         "generate s"], rows))

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
    out.append(table(["model", "against transformers", "batch", "decode", "prefill", "same greedy tokens"], rows))

    rows = []
    for model, fact in facts.items():
        for mode, nbytes in fact["weight_bytes"].items():
            ours = find(runs, model, "gencycle compiled", mode, 1)
            if ours is None:
                continue
            bound = bandwidth / nbytes
            rows.append([model, mode, f"{nbytes / 2**20:.0f} MiB", f"{bound:.1f}", f"{ours.decode:.1f}",
                         f"{100 * ours.decode / bound:.0f}%"])
    out.append(f"Measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (bytes read + written per second).\n\n"
               + table(["model", "weights", "bytes read per token", "bound tok/s", "compiled tok/s, batch 1",
                        "of bound"], rows))
    compile_times = ", ".join(f"{model} {mode} batch {batch} {seconds:.0f} s" for model, fact in facts.items()
                              for (mode, batch), seconds in fact["compile_seconds"].items())
    out.append("First compiled call per shape in this process (compiling, or loading what an earlier run "
               f"compiled; includes a 2-token generate): {compile_times}.")
    return "\n\n".join(out)


def _status(value: float | None, target: float, above: bool = True) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= target if above else value < target) else "not met"


def goals(runs: list[Run], llama: dict | None, start: dict | None, model: str = "smollm2-135m") -> str:
    """Issue 17's goals, each with its measured ratio (or seconds) and whether it is met."""
    def ratio(mode, batch, field, over_mode="bf16"):
        ours, base = find(runs, model, "gencycle compiled", mode, batch), find(runs, model, "gencycle compiled",
                                                                               over_mode, batch)
        return None if ours is None or base is None else getattr(ours, field) / getattr(base, field)

    rows = []
    for mode in ("int8", "int4"):
        for batch in (1, 8):
            value = ratio(mode, batch, "prefill")
            rows.append([f"1. {mode} prefill / bf16 prefill, batch {batch}", "" if value is None else f"{value:.2f}x",
                         ">= 0.9x", _status(value, 0.9)])
    value = ratio("int4", 8, "decode")
    rows.append(["2. compiled int4 / compiled bf16 decode, batch 8", "" if value is None else f"{value:.2f}x",
                 ">= 1.5x", _status(value, 1.5)])
    int4 = find(runs, model, "gencycle compiled", "int4", 1)
    value = int4.decode / llama["decode"] if int4 and llama else None
    rows.append(["2. compiled int4 decode, batch 1 / llama.cpp Q4_1 decode", "" if value is None else f"{value:.2f}x",
                 ">= 1.4x", _status(value, 1.4)])
    if start:
        rows.append(["3. second `gencycle chat --compile`: process start to first token",
                     f"{start['first_token']:.1f} s", "< 5 s", _status(start["first_token"], 5, above=False)])
        if "eager_first_token" in start:
            rows.append(["3. ... the same with --no-compile (what a start costs without compiled steps)",
                         f"{start['eager_first_token']:.1f} s", "(said)", ""])
        rows.append(["3. ... to the end of its 16-token reply (the compiled steps loaded)",
                     f"{start['reply']:.1f} s", "(said)", ""])
        generate = start.get("generate")
        if generate:
            ours, eager = generate["defaults"], generate["--no-compile"]
            rows.append(["4. `gencycle generate`, 16 tokens, whole process with the defaults: first / second",
                         f"{ours[0]:.1f} / {ours[-1]:.1f} s", f"(--no-compile: {eager[0]:.1f} / {eager[-1]:.1f} s)",
                         "said"])
    value = int4.prefill / llama["prefill"] if int4 and llama else None
    rows.append(["5. gencycle int4 / llama.cpp prefill, batch 1", "" if value is None else f"{value:.2f}x",
                 "(printed)", "" if value is None else "printed"])
    rows.append(["5. gencycle compiled int4 / llama.cpp decode, batch 1",
                 "" if int4 is None or not llama else f"{int4.decode / llama['decode']:.2f}x", "(printed)",
                 "" if int4 is None or not llama else "printed"])
    return table(["goal", "measured", "target", "status"], rows)


def main(repeat: int = 2, new_tokens: int = 128, prompt_length: int = 128, batches=(1, 8),
         models=("smollm2-135m",), eager: bool = False, llama: dict | None = None,
         packages="auto") -> tuple[str, list[Run]]:
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
        model_runs, facts[name] = run_model(name, folder, prompts, batches, new_tokens, repeat, eager=eager,
                                            packages=packages)
        runs += model_runs
    bandwidth = max(bandwidth, copy_bandwidth())  # measured again: other processes only ever lower it
    return report(runs, facts, bandwidth, batches, llama), runs
