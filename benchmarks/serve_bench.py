"""`make bench-serve`: gencycle serve and llama.cpp's llama-server under the same streaming chat load.

    python -m benchmarks.serve_bench                        # both servers, N = 1, 4, 8, 16 clients
    python -m benchmarks.serve_bench --build-llama-server   # build llama-server first if it is missing
    python -m benchmarks.serve_bench --clients 1 8 --requests-per-client 2 --no-llama

A load generator (asyncio + httpx, loopback only, bounded in requests and time) runs N clients; each
sends `--requests-per-client` streaming chat requests one after the other (with one client: as many
requests as the largest N sends, so that its texts are the reference "alone" answers that the
other phases' greedy texts are compared with): a real dialogue from the
shipped chitchat-dialogsum test split to summarize (each request its own dialogue), 64 new tokens,
greedy, EOS ignored so that every answer has 64 tokens on both servers. Per request: time to first
token (TTFT: from sending to the first content chunk), inter-token latency (ITL: the gaps between
content chunks), tokens from the usage chunk. Per N: requests done, errors, TTFT and ITL p50 / p95,
and aggregate output tokens/s (all tokens / the phase's wall time).

Both servers are up for the whole run, idle while the other one is measured, and each phase runs on
one then the other, so that a machine whose load drifts weighs on both alike. They run the packaged
SmolLM2-135M-Instruct GGUF file with as many threads as torch uses and 16 parallel sequences: gencycle with `--quantize int4` (compiled decoding by default where a C++
compiler exists, warmed up before /health is ready), llama-server on the Q4_1 file itself with
`--parallel 16` (continuous batching is its default) and `cache_prompt: false` in each request
(gencycle has no prompt cache, and each request has its own dialogue anyway).

llama-server is built from the llama.cpp source vendored in the llama-cpp-python 0.3.36 sdist
(`--build-llama-server`: pip download, then cmake, about 10 minutes on 2 cores) into
build/llama-server-build. On this project's Xeon, llama.cpp's AMX code crashes with a segfault, so
it is built with GGML_NATIVE=OFF, AVX-512 on and AMX off. Without the binary the table shows
gencycle alone and says why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import torch

from .common import machine, table

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
LLAMA_SERVER = BUILD / "llama-server-build" / "bin" / "llama-server"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_AVX512=ON", "-DGGML_AVX2=ON",
               "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF",
               "-DGGML_AMX_BF16=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"]
MODEL = "smollm2-135m-instruct"
PARALLEL = 16
CONTEXT_PER_SEQUENCE = 1024
INSTRUCTION = "Summarize this dialogue in one sentence.\n\n"


# ------------------------------------------------------------------ the load
def dialogues() -> list[str]:
    from gencycle.data.dialogsum import load_shipped
    return [INSTRUCTION + example.dialogue for example in load_shipped("test")]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """One streamed chat request: its TTFT, ITLs, tokens, or its error."""
    start = time.perf_counter()
    first = last = None
    gaps, tokens, error, text = [], 0, None, []
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = str(chunk["error"])
                    break
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    text.append(chunk["choices"][0]["delta"]["content"])
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    else:
                        gaps.append(now - last)
                    last = now
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}"
    if error is None and first is None:
        error = "no content streamed"
    return {"error": error, "ttft": None if first is None else first - start, "gaps": gaps, "tokens": tokens,
            "text": "".join(text)}


async def run_load(url: str, body: dict, prompts: list[str], clients: int, per_client: int,
                   timeout: float) -> dict:
    """`clients` concurrent clients, `per_client` requests each; request k has prompt k."""
    queue = [prompts[k % len(prompts)] for k in range(clients * per_client)]
    results: list[dict | None] = [None] * len(queue)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        async def worker(k):
            for j in range(per_client):
                index = j * clients + k
                results[index] = await one_request(client, url, {**body, "messages": [
                    {"role": "user", "content": queue[index]}]})
        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(k) for k in range(clients))), timeout)
        except TimeoutError:          # the phase is cut short: what was not answered counts as lost
            pass
        wall = time.perf_counter() - start
    lost = sum(r is None for r in results)
    results = [r if r is not None else {"error": "not answered in time"} for r in results]
    done = [r for r in results if r["error"] is None]
    ttft = [r["ttft"] for r in done]
    gaps = [g for r in done for g in r["gaps"]]
    return {"requests": len(done), "errors": len(results) - len(done), "lost": lost,
            "texts": [r.get("text") for r in results],
            "ttft_p50": percentile(ttft, 50) * 1e3, "ttft_p95": percentile(ttft, 95) * 1e3,
            "itl_p50": percentile(gaps, 50) * 1e3, "itl_p95": percentile(gaps, 95) * 1e3,
            "tokens_per_s": sum(r["tokens"] for r in done) / wall,
            "first_error": next((r["error"] for r in results if r["error"]), None)}


# ------------------------------------------------------------------ the servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server subprocess on a loopback port, ready when /health answers 200 (bounded wait)."""

    def __init__(self, name: str, command: list[str], port: int, ready_timeout: float, log: Path):
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}; see {log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > ready_timeout:
                self.close()
                raise RuntimeError(f"{name} was not ready after {ready_timeout:.0f} s; see {log}")
            time.sleep(0.2)
        self.ready_seconds = time.perf_counter() - started

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def start_gencycle(model: str, threads: int, extra: list[str], timeout: float) -> Process:
    port = free_port()
    command = [sys.executable, "-m", "gencycle.cli", "serve", model, "--port", str(port), "--quantize", "int4",
               "--max-concurrency", str(PARALLEL), "--embedding-model", "none", "--log-level", "info", *extra]
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return Process("gencycle serve", command, port, timeout, BUILD / "serve-bench-gencycle.log")


def start_llama(threads: int, timeout: float) -> Process:
    from gencycle import assets
    port = free_port()
    command = [str(LLAMA_SERVER), "-m", str(assets.resolve(MODEL)), "--host", "127.0.0.1", "--port", str(port),
               "--parallel", str(PARALLEL), "--ctx-size", str(PARALLEL * CONTEXT_PER_SEQUENCE), "--threads",
               str(threads), "--threads-batch", str(threads), "--no-webui"]
    return Process("llama-server", command, port, timeout, BUILD / "serve-bench-llama.log")


def build_llama_server() -> str | None:
    """Build llama-server from the llama-cpp-python sdist's llama.cpp source; None when done, else why not."""
    if LLAMA_SERVER.exists():
        return None
    if not shutil.which("cmake") or not (shutil.which("g++") or shutil.which("c++")):
        return "cmake and a C++ compiler are needed to build llama-server"
    source = BUILD / "llama-src"
    source.mkdir(parents=True, exist_ok=True)
    print(f"downloading the {LLAMA_CPP_PYTHON} sdist ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_PYTHON,
                    "-d", str(source)], check=True)
    archive = next(source.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    tree = next(source.glob("llama_cpp_python-*/vendor/llama.cpp"))
    print("building llama-server (about 10 minutes on 2 cores) ...", flush=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(tree), "-B", str(LLAMA_SERVER.parents[1]), *generator, *CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(LLAMA_SERVER.parents[1]), "--target", "llama-server", "-j",
                    str(os.cpu_count() or 2)], check=True)
    return None


# ------------------------------------------------------------------ the report
def measure(servers: dict[str, tuple[Process, dict]], prompts: list[str], clients: list[int], per_client: int,
            timeout: float) -> dict[str, dict[int, dict]]:
    """Each phase (N clients) runs on every server in turn, so that a machine whose load drifts
    weighs on both alike. servers: name -> (process, request body)."""
    for server, body in servers.values():
        asyncio.run(run_load(server.url, body, prompts, 1, 1, timeout))    # warm-up: one request
    out: dict[str, dict[int, dict]] = {name: {} for name in servers}
    for n in clients:
        requests = per_client * (max(clients) if n == 1 else 1)   # alone: every prompt the others send
        for name, (server, body) in servers.items():
            print(f"  {name}: {n} client(s) ...", flush=True)
            result = out[name][n] = asyncio.run(run_load(server.url, body, prompts, n, requests, timeout))
            if result["first_error"]:
                print(f"    first error: {result['first_error']}", flush=True)
    for by_n in out.values():
        if 1 in by_n:                             # greedy: the same text alone and in a busy batch?
            alone = by_n[1]["texts"]
            for r in by_n.values():
                pairs = [(t, alone[k]) for k, t in enumerate(r["texts"]) if t is not None and alone[k] is not None]
                r["same"] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
    return out


def report(results: dict[str, dict[int, dict]], clients: list[int], note: str) -> str:
    headers = ["server", "clients", "requests done", "errors", "lost", "TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms",
               "ITL p95 ms", "tokens/s", "same text as alone"]
    rows = []
    for name, by_n in results.items():
        for n in clients:
            r = by_n[n]
            rows.append([name, n, r["requests"], r["errors"], r["lost"], r["ttft_p50"], r["ttft_p95"], r["itl_p50"],
                         r["itl_p95"], r["tokens_per_s"], r.get("same", "-")])
    text = table(headers, rows)
    if "llama-server" in results and "gencycle" in results:
        ratio_rows = []
        for n in clients:
            g, l = results["gencycle"][n], results["llama-server"][n]
            ratio_rows.append([n, g["tokens_per_s"] / l["tokens_per_s"] if l["tokens_per_s"] else float("nan"),
                               g["ttft_p50"] / l["ttft_p50"] if l["ttft_p50"] else float("nan"),
                               g["itl_p50"] / l["itl_p50"] if l["itl_p50"] else float("nan")])
        text += "\n\ngencycle / llama-server (tokens/s above 1 is faster; TTFT and ITL below 1 are faster):\n\n"
        text += table(["clients", "tokens/s ratio", "TTFT p50 ratio", "ITL p50 ratio"], ratio_rows)
    return text + ("\n\n" + note if note else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--model", default=MODEL, help="gencycle's model (llama-server runs only on the default)")
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of each server")
    parser.add_argument("--no-llama", action="store_true", help="gencycle alone")
    parser.add_argument("--build-llama-server", action="store_true", help="build llama-server first if missing")
    parser.add_argument("--gencycle-args", nargs=argparse.REMAINDER, default=[],
                        help="more flags for gencycle serve (last on the line), e.g. --no-compile")
    parser.add_argument("--ready-timeout", type=float, default=1200, help="seconds a server may take to be ready")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one load phase may take")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.requests_per_client < 1 or args.new_tokens < 1:
        parser.error("--clients, --requests-per-client and --new-tokens must be >= 1")
    BUILD.mkdir(exist_ok=True)
    prompts = dialogues()
    body = {"max_tokens": args.new_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    note = ""
    if args.no_llama or args.model != MODEL:
        note = "llama-server: not run (--no-llama or another --model)."
    else:
        try:
            why = build_llama_server() if args.build_llama_server else \
                (None if LLAMA_SERVER.exists() else f"no {LLAMA_SERVER.relative_to(ROOT)} (run with --build-llama-server)")
        except (subprocess.CalledProcessError, OSError, StopIteration) as error:
            why = f"building llama-server failed: {error}"
        if why:
            note = f"llama-server: not run: {why}."
    print(f"machine: {machine()}; {args.threads} threads per server; load average at start "
          f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} (1 / 5 / 15 min)", flush=True)
    servers: dict[str, tuple[Process, dict]] = {}
    try:
        print("starting gencycle serve (int4, compiled decoding warmed up before it is ready) ...", flush=True)
        servers["gencycle"] = (start_gencycle(args.model, args.threads, args.gencycle_args, args.ready_timeout), body)
        print(f"  ready after {servers['gencycle'][0].ready_seconds:.0f} s", flush=True)
        for line in (BUILD / "serve-bench-gencycle.log").read_text().splitlines():
            if "decoding" in line and "row(s)" in line:              # the engine's compiled / eager choice
                print("  " + line.split(":", 1)[1].strip(), flush=True)
        if not note:
            print("starting llama-server ...", flush=True)
            servers["llama-server"] = (start_llama(args.threads, args.ready_timeout), {**body, "cache_prompt": False})
        results = measure(servers, prompts, args.clients, args.requests_per_client, args.timeout)
    finally:
        for server, _ in servers.values():
            server.close()
    print()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(report(results, args.clients, (note + "\n" if note else "") + f"load average at the end: {load} (1 / 5 / 15 min)"))


if __name__ == "__main__":
    main()
