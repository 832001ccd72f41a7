"""How long a new process takes to answer (issue 17, goals 3 and 4).

`gencycle chat MODEL --compile --max-new-tokens 16`, started twice, each a fresh process with one
message on its standard input. The clock starts before the process does and stops at the first
byte of the reply (the first generated token: the eager prefill's) and at the end of the reply
(16 tokens: the compiled steps have run). The first process compiles the steps ahead of time (in a
fresh compiled-steps folder, so that an earlier run cannot have done it); the second finds them
compiled: goal 3 is the second's first token.

Then `gencycle generate MODEL PROMPT --max-new-tokens 16`, whole process wall time, twice each:
with the defaults (compiled ahead of time: the chats built the step, so both processes load it;
the first chat's time is what the first run of a shape costs) and with --no-compile (eager
decoding, what `generate` did before the defaults).

    python -m benchmarks.start [--model smollm2-135m-instruct] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MESSAGE = "What is the capital of France?"
PROMPT = b"assistant> "  # chat prints it, then the reply as it streams


def fresh_cache() -> Path:
    """A GENCYCLE_CACHE folder with no compiled steps whose GGUF cache is the user's (no conversion)."""
    from gencycle.checkpoints.gguf import default_cache_dir
    folder = Path(tempfile.mkdtemp(prefix="gencycle-start-"))
    (folder / "gguf").symlink_to(default_cache_dir().resolve(), target_is_directory=True)
    return folder


def time_chat(model: str = "smollm2-135m-instruct", new_tokens: int = 16, timeout: float = 1800,
              extra: tuple[str, ...] = (), env: dict | None = None) -> dict:
    """Seconds from starting the process to the first byte of the reply and to its end."""
    command = [sys.executable, "-m", "gencycle.cli", "chat", model, "--compile", "--max-new-tokens", str(new_tokens),
               *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
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


def time_generate(model: str, extra: tuple[str, ...] = (), env: dict | None = None, timeout: float = 1800) -> dict:
    """Wall time of one `gencycle generate` process, and the defaults line it printed."""
    command = [sys.executable, "-m", "gencycle.cli", "generate", model, MESSAGE, "--max-new-tokens", "16", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed: {done.stderr[-800:]}")
    line = next((line for line in done.stderr.splitlines() if line.startswith("gencycle: ")), "")
    return {"seconds": seconds, "defaults": line, "text": done.stdout.strip()}


def main(model: str = "smollm2-135m-instruct", runs: int = 2) -> tuple[str, dict]:
    """The report and the last chat process's figures (goal 3)."""
    caches = []
    try:
        caches.append(fresh_cache())
        chats = []
        for run in range(runs):
            print(f"  chat --compile, process {run + 1} ...", flush=True)
            chats.append(time_chat(model, env={"GENCYCLE_CACHE": str(caches[-1])}))
        print("  chat --no-compile (eager decoding, for comparison) ...", flush=True)
        eager_chat = time_chat(model, extra=("--no-compile",))
        generates = {}  # the chats' folder: the chat's step shape (batch 1, 64 slots) serves these prompts too
        for name, extra, env in (("defaults", (), {"GENCYCLE_CACHE": str(caches[-1])}),
                                 ("--no-compile", ("--no-compile",), {})):
            for run in range(runs):
                print(f"  generate {name}, process {run + 1} ...", flush=True)
                generates.setdefault(name, []).append(time_generate(model, extra, env))
    finally:
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
    lines = [f"- process {i + 1}: first token after {r['first_token']:.1f} s, the 16-token reply done after "
             f"{r['reply']:.1f} s ({r['text'][:60]!r})" for i, r in enumerate(chats)]
    text = ("`gencycle chat " + model + " --compile --max-new-tokens 16`, one message, a new process each time "
            "(from starting the process; the first in a fresh compiled-steps folder):\n\n" + "\n".join(lines)
            + f"\n- for comparison, `--no-compile` (eager decoding): first token after {eager_chat['first_token']:.1f} s, "
            f"the reply done after {eager_chat['reply']:.1f} s (most of a start is importing torch and loading the "
            "model: on a busy machine, seconds)")
    rows = [f"- `gencycle generate {model} '{MESSAGE}' --max-new-tokens 16" + ("" if name == "defaults" else f" {name}")
            + "`: " + ", ".join(f"process {i + 1} {r['seconds']:.1f} s" for i, r in enumerate(results))
            + f" (same text in each: {len({r['text'] for r in results}) == 1})"
            for name, results in generates.items()]
    same = generates["defaults"][-1]["text"] == generates["--no-compile"][-1]["text"]
    text += ("\n\nWhole `gencycle generate` processes (wall time, start to exit):\n\n" + "\n".join(rows)
             + f"\n\nThe defaults line: `{generates['defaults'][-1]['defaults']}`. Compiled and eager texts equal: "
             f"{same}.")
    return text, {**chats[-1], "eager_first_token": eager_chat["first_token"], "generate": {name: [r["seconds"] for r in results] for name, results in generates.items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.start", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(main(args.model, args.runs)[0])
