"""gencycle vs llama.cpp, the peer a CPU user would otherwise pick (`make bench-peers`).

llama.cpp (through llama-cpp-python, built from PyPI by `make bench-peers`) runs the packaged
SmolLM2-135M-Instruct GGUF file itself (Q4_1: 4-bit weights in groups of 32); gencycle loads the
same file, then quantizes it to int4 / int8. Same prompt (128 tokens of a real dialogue), 128
greedy new tokens, batch 1, the same number of threads, fastest of `repeat` runs.
"""

from __future__ import annotations

import time

import torch

import gencycle

from . import speed
from .common import SMOLLM2, table, text_prompts

GENCYCLE_MODES = ("int4", "int8", "bf16", "fp32")


def time_llama_cpp(prompt: list[int], new_tokens: int, repeat: int) -> tuple[float, float]:
    """Prefill and decode tokens / s of llama.cpp on the packaged GGUF file."""
    from llama_cpp import Llama

    from gencycle import assets
    llm = Llama(model_path=str(assets.resolve(SMOLLM2)), n_ctx=512, n_batch=len(prompt),
                n_threads=torch.get_num_threads(), verbose=False)
    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(repeat):
        llm.reset()  # otherwise generate() reuses the prompt it already holds and skips the prefill
        start = time.perf_counter()
        first = None
        for count, _token in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True), start=1):
            if first is None:
                first = time.perf_counter()
            if count == new_tokens:
                break
        end = time.perf_counter()
        best_prefill, best_decode = min(best_prefill, first - start), min(best_decode, end - first)
    return len(prompt) / best_prefill, (new_tokens - 1) / best_decode


def main(repeat: int = 3, new_tokens: int = 128, prompt_length: int = 128) -> str:
    prompt = text_prompts(1, prompt_length)
    print("  llama.cpp ...", flush=True)
    llama = time_llama_cpp(prompt[0].tolist(), new_tokens, repeat)
    rows = []
    for mode in GENCYCLE_MODES:
        model = speed.load_gencycle(SMOLLM2, mode)
        step = gencycle.compile_decoding(model).compiled_decoding
        for name, compiled in ((f"gencycle {mode}", None), (f"gencycle compiled {mode}", step)):
            print(f"  {name} ...", flush=True)
            speed.time_gencycle(model, prompt, 2, 1, compiled)  # warm-up (compiles the graph)
            prefill, seconds, _ = speed.time_gencycle(model, prompt, new_tokens, repeat, compiled)
            rows.append([name, "the same file, loaded by gencycle", prompt_length / prefill,
                         (new_tokens - 1) / (seconds - prefill)])
    print("  llama.cpp again ...", flush=True)  # the faster of two measurements, before and after
    again = time_llama_cpp(prompt[0].tolist(), new_tokens, repeat)
    llama_prefill, llama_decode = max(llama[0], again[0]), max(llama[1], again[1])
    rows = [["llama.cpp (llama-cpp-python)", "GGUF Q4_1", llama_prefill, llama_decode, "1.00x"]] + [
        row + [f"{row[3] / llama_decode:.2f}x"] for row in rows]
    return ("SmolLM2-135M-Instruct, batch 1, 128 prompt tokens + 128 greedy new tokens:\n\n"
            + table(["engine", "weights", "prefill tok/s", "decode tok/s", "decode vs llama.cpp"], rows))


if __name__ == "__main__":
    print(main())
