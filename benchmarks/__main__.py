"""`python -m benchmarks` (the first step of `make bench`): issue 17's table and goals, and what quantization costs.

    python -m benchmarks                       # everything below, in one run (30-60 minutes on 2 busy cores)
    python -m benchmarks --only speed start    # the issue-17 table and goals without the quality part
    python -m benchmarks --markdown benchmarks/RESULTS.md   # also write the report to a file

Parts: `speed` (SmolLM2-135M, gencycle fp32 / bf16 / int8 / int4 with compiled decoding against
transformers fp32 / bf16, batch 1 and 8; llama.cpp on the Q4_1 file, timed before and after, when
llama-cpp-python is installed), `start` (two new `gencycle chat --compile` processes: the second's
time to its first token), `quality` (perplexity and agreement with fp32 of each precision). With
`speed` the report ends with each goal of issue 17, its measured ratio and whether it is met.
`make bench-peers` (benchmarks/peers.py) gives the fuller llama.cpp table; --models adds the
GPT-2-124M-shaped model with random weights to the speed part.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from . import peers, quality, speed, start
from .common import machine

PARTS = ("speed", "start", "quality")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=PARTS, nargs="+", help="run only these parts (default: all)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"], choices=["smollm2-135m", "gpt2-124m-random"],
                        help="models of the speed part (default: smollm2-135m)")
    parser.add_argument("--eager", action="store_true", help="also time eager decoding (default: compiled only)")
    parser.add_argument("--no-llama", action="store_true", help="leave llama.cpp out of the speed part")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    parts_run = set(args.only or PARTS)

    begin = time.time()
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    parts = [f"Machine: {machine()}; CPU flags: {cpu_flag_names()}."]
    runs, llama, chat = [], None, None
    if "speed" in parts_run:
        def speed_part():
            nonlocal runs, llama
            use_llama = not args.no_llama and peers.installed()
            if use_llama:
                print("llama.cpp on the Q4_1 file, before gencycle ...", flush=True)
                before = peers.llama_cpp_figures(new_tokens=args.new_tokens, repeat=max(args.repeat, 2))
            text, runs = speed.main(repeat=args.repeat, new_tokens=args.new_tokens, batches=tuple(args.batches),
                                    models=tuple(args.models), eager=args.eager)
            if use_llama:
                print("llama.cpp on the Q4_1 file, after gencycle ...", flush=True)
                llama = peers.better(before, peers.llama_cpp_figures(new_tokens=args.new_tokens,
                                                                     repeat=max(args.repeat, 2)))
                for model in args.models:  # the issue table's llama.cpp row (measured after the table was made)
                    if model.startswith("smollm2"):
                        text = text.replace(speed.issue_table(runs, model, None), speed.issue_table(runs, model, llama), 1)
                text = text.replace("\n\n", f"\n\n(llama.cpp {llama['version']}: {peers.BUILD}; batch 1, the faster "
                                    "of a measurement before and one after gencycle's)\n\n", 1)
            else:
                text += "\n\nllama.cpp: not run (" + ("--no-llama" if args.no_llama else "llama-cpp-python is not "
                                                     "installed: `make bench-peers` builds it") + ")."
            return text
        parts.append(run_part("## Speed: gencycle vs transformers and llama.cpp (same process, same weights, greedy, "
                              f"128 prompt + {args.new_tokens} new tokens)", speed_part))
    if "start" in parts_run:
        def start_part():
            nonlocal chat
            text, chat = start.main()
            return text
        parts.append(run_part("## Fast starts", start_part))
    if "quality" in parts_run:
        parts.append(run_part("## Quality of the quantized weights", quality.main))
    if runs or chat:
        parts.append("## Issue 17's goals\n\n" + speed.goals(runs, llama, chat))
    parts.append(f"Total benchmark time: {(time.time() - begin) / 60:.1f} min. Load average (1 min) at the start: "
                 f"{load_before:.1f}, at the end: {os.getloadavg()[0]:.1f} (other processes share the cores: "
                 "above the core count, every figure here is slowed down).")
    report = "\n\n".join(parts)
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report + "\n")


def run_part(title: str, part) -> str:
    """One part's report, printed as soon as it is done; a part that fails says why, and the others still run."""
    print(f"{title.lstrip('# ')} ...", flush=True)
    begin = time.time()
    try:
        text = part()
    except Exception as error:  # noqa: BLE001 - a benchmark part's failure is reported, not fatal to the others
        text = f"FAILED after {(time.time() - begin) / 60:.1f} min: {type(error).__name__}: {error}"
    else:
        text += f"\n\n({(time.time() - begin) / 60:.1f} min, load average (1 min) now {os.getloadavg()[0]:.1f})"
    print(f"\n{title}\n\n{text}\n", flush=True)
    return f"{title}\n\n{text}"


def cpu_flag_names() -> str:
    """The CPU features the fast paths use, as /proc/cpuinfo names them (those present)."""
    from gencycle.model.cpu_kernels import cpu_flags
    wanted = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    have = cpu_flags()
    return ", ".join(flag for flag in wanted if flag in have) or "none of " + ", ".join(wanted)


if __name__ == "__main__":
    main()
