"""`make bench` (= `python -m benchmarks`): gencycle against transformers, and what quantization costs.

    python -m benchmarks                       # everything (about 10 minutes on 2 CPU cores)
    python -m benchmarks --only speed --repeat 3
    python -m benchmarks --markdown benchmarks/RESULTS.md   # also write the tables to a file

`make bench-peers` (benchmarks/peers.py) adds llama.cpp on the same GGUF file.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from . import quality, speed
from .common import machine


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("speed", "quality"), help="run one part")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()

    start = time.time()
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    parts = [f"Machine: {machine()}."]
    if args.only in (None, "speed"):
        parts.append("## Speed: gencycle vs transformers (same process, same weights, greedy, "
                     f"128 prompt + {args.new_tokens} new tokens)\n\n"
                     + speed.main(repeat=args.repeat, new_tokens=args.new_tokens, batches=tuple(args.batches)))
    if args.only in (None, "quality"):
        parts.append("## Quality of the quantized weights\n\n" + quality.main())
    parts.append(f"Total benchmark time: {(time.time() - start) / 60:.1f} min. Load average (1 min) at the start: "
                 f"{load_before:.1f}, at the end: {os.getloadavg()[0]:.1f} (other processes share the cores: "
                 "above the core count, every figure here is slowed down).")
    report = "\n\n".join(parts)
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report + "\n")


if __name__ == "__main__":
    main()
