"""How long a new process takes to answer: `gencycle chat --compile`, started twice (issue 17, goal 3).

Each run is a fresh `python -m gencycle.cli chat MODEL --compile --max-new-tokens 16` with one
message on its standard input. The clock starts before the process does and stops at the first
byte of the reply (the first generated token: the eager prefill's) and at the end of the reply
(16 tokens: the compiled steps have run). The first run may compile the steps (or find them
compiled by an earlier run); the second finds them compiled: goal 3 is the second's first token.

    python -m benchmarks.start [--model smollm2-135m-instruct] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

MESSAGE = "What is the capital of France?"
PROMPT = b"assistant> "  # chat prints it, then the reply as it streams


def time_chat(model: str = "smollm2-135m-instruct", new_tokens: int = 16, timeout: float = 1800,
              extra: tuple[str, ...] = ()) -> dict:
    """Seconds from starting the process to the first byte of the reply and to its end."""
    command = [sys.executable, "-m", "gencycle.cli", "chat", model, "--compile", "--max-new-tokens", str(new_tokens),
               *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    process.stdin.write(f"{MESSAGE}\n/exit\n".encode())
    process.stdin.close()
    seen, first, reply, text = b"", None, None, b""
    deadline = start + timeout
    while time.perf_counter() < deadline:
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        if first is None and seen.count(PROMPT) >= 1 and len(seen) > seen.index(PROMPT) + len(PROMPT):
            first = time.perf_counter() - start
        if first is not None and b"\n" in seen[seen.index(PROMPT) + len(PROMPT):]:
            reply = time.perf_counter() - start
            text = seen[seen.index(PROMPT) + len(PROMPT):].split(b"\n")[0]
            break
    if reply is None and process.poll() is None:
        process.kill()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
    if reply is None:
        error = process.stderr.read().decode(errors="replace")[-800:]
        raise RuntimeError(f"`{' '.join(command)}` gave no reply: {error}")
    return {"first_token": first, "reply": reply, "text": text.decode(errors="replace")}


def main(model: str = "smollm2-135m-instruct", runs: int = 2) -> tuple[str, dict]:
    results = []
    for run in range(runs):
        print(f"  chat --compile, process {run + 1} ...", flush=True)
        results.append(time_chat(model))
    lines = [f"- process {i + 1}: first token after {r['first_token']:.1f} s, the 16-token reply done after "
             f"{r['reply']:.1f} s ({r['text'][:60]!r})" for i, r in enumerate(results)]
    return ("`gencycle chat " + model + " --compile --max-new-tokens 16`, one message, a new process each time "
            "(from starting the process):\n\n" + "\n".join(lines)), results[-1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.start", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(main(args.model, args.runs)[0])
