"""`make bench-pal`: program-aided answers (PAL) against answering directly, SmolLM2-135M-Instruct, greedy.

    python -m benchmarks.pal_bench                 # the 100 synthetic problems (about 10-30 minutes on 2 cores)
    python -m benchmarks.pal_bench --limit 20 --show 3

The problems are data/word-problems/problems.jsonl (synthetic, written by
scripts/make_word_problems.py; exact answers known). Both ways use the packaged model, greedy
decoding, the chat template and the same three worked examples (gencycle.integrate.pal). PAL: the
model writes a program, the sandbox runs it, the last number it prints is the answer. Direct: the
last number of the model's reply. An answer is right when it equals the exact one (to 1e-6).
Also counted: why PAL runs gave no answer (refused by the sandbox's check, a Python error, a
timeout), and the time each way took.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

from benchmarks.common import machine, table
from gencycle.generation import LLM
from gencycle.integrate.pal import answer_directly, solve_with_programs

PROBLEMS = Path(__file__).resolve().parents[1] / "data" / "word-problems" / "problems.jsonl"


def right(number, answer) -> bool:
    return number is not None and abs(number - answer) < 1e-6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pal_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, help="the first N problems only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--show", type=int, default=2, help="print this many programs with their results")
    parser.add_argument("--json", type=Path, help="also write every answer here")
    args = parser.parse_args()
    problems = [json.loads(line) for line in PROBLEMS.read_text().splitlines()][:args.limit]
    questions = [p["question"] for p in problems]
    llm = LLM.load(args.model)
    print(f"Machine: {machine()}.\nModel: {args.model}, greedy; {len(problems)} synthetic problems.\n")

    start = time.perf_counter()
    pal = solve_with_programs(llm, questions, batch_size=args.batch_size, progress=True)
    pal_s = time.perf_counter() - start
    start = time.perf_counter()
    direct = answer_directly(llm, questions, batch_size=args.batch_size, progress=True)
    direct_s = time.perf_counter() - start

    pal_right = [right(r.number, p["answer"]) for r, p in zip(pal, problems)]
    direct_right = [right(r.number, p["answer"]) for r, p in zip(direct, problems)]
    outcomes = collections.Counter("no program" if r.run is None else
                                   "ok, no number" if r.run.ok and r.number is None else
                                   "ok" if r.run.ok else r.run.reason for r in pal)
    n = len(problems)
    print(table(["method", "right", "accuracy", "seconds"],
                [["direct answer", sum(direct_right), f"{sum(direct_right) / n:.1%}", f"{direct_s:.0f}"],
                 ["PAL (program in the sandbox)", sum(pal_right), f"{sum(pal_right) / n:.1%}", f"{pal_s:.0f}"]]))
    both = sum(a and b for a, b in zip(pal_right, direct_right))
    print(f"\nRight both ways: {both}; PAL only: {sum(pal_right) - both}; direct only: {sum(direct_right) - both}.")
    print("PAL runs: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()) + ".")
    by_template = collections.defaultdict(lambda: [0, 0, 0])
    for p, a, b in zip(problems, pal_right, direct_right):
        by_template[p["template"]][0] += 1
        by_template[p["template"]][1] += a
        by_template[p["template"]][2] += b
    print("\n" + table(["template", "problems", "PAL right", "direct right"],
                       [[t, *v] for t, v in by_template.items()]))
    for p, r, d in list(zip(problems, pal, direct))[:args.show]:
        print(f"\n--- {p['id']}: {p['question']} (answer {p['answer']})\nprogram:\n{r.program}\n"
              f"printed: {r.answer!r} ({r.run.reason if r.run else 'no program'})\ndirect: {d.completion!r}")
    if args.json:
        args.json.write_text(json.dumps([{"id": p["id"], "answer": p["answer"], "program": r.program,
                                          "pal": r.answer, "pal_reason": r.run.reason if r.run else None,
                                          "direct": d.completion}
                                         for p, r, d in zip(problems, pal, direct)], indent=1))


if __name__ == "__main__":
    main()
