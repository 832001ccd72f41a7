"""A real `gencycle serve` process for the server tests: a tiny random chat model saved in a folder,
the server started as a subprocess on a free loopback port, ready once /health answers 200."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import torch
from tiny_llm import save_tiny_chat_model


def tiny_chat_folder(folder, context: int = 1024):
    """tests/tiny_llm's model with its head scaled up, so that greedy choices are well separated."""
    import transformers
    save_tiny_chat_model(folder, context=context)
    model = transformers.LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    model.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`gencycle serve` in a subprocess; `url` is its base address. Stops on close (bounded waits)."""

    def __init__(self, folder, *flags: str, timeout: float = 90):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("GENCYCLE_API_KEY", None)
        self.log = open(os.path.join(str(folder), "..", f"server-{self.port}.log"), "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gencycle.cli", "serve", str(folder), "--port", str(self.port), *flags],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gencycle serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"gencycle serve was not ready after {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
