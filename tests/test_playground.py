"""The playground (issue 14, point 5): the page at GET / and its attention endpoint.

The app is the server's own (`create_app`) over a tiny random chat model saved in the test; the
attention weights are compared with `gencycle.inspection.attention_maps` on the same model and ids.
The browser test (tests/test_playground_browser.py) drives the page itself.
"""

import json
import re
import threading
import time
from html.parser import HTMLParser

import pytest
import torch
from fastapi.testclient import TestClient

from gencycle.inspection import attention_maps
from gencycle.serve import ServeConfig, create_app
from gencycle.serve import playground
from tiny_llm import save_tiny_chat_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = dict(compile=False, embedding_model="none", max_concurrency=4)
MESSAGES = [{"role": "system", "content": "Summarize."}, {"role": "user", "content": "Is it raining?"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("playground") / "tiny-chat")


@pytest.fixture(scope="module")
def client(folder):
    app = create_app(folder, ServeConfig(**CONFIG))
    with TestClient(app) as client:                  # runs the lifespan: the model loads in a thread
        assert app.state.runtime.wait(timeout=60), app.state.runtime.error
        yield client


@pytest.fixture(scope="module")
def llm(client):
    return client.app.state.runtime.llm


def maps(out) -> torch.Tensor:
    return torch.tensor(out["attention"], dtype=torch.double)


def attention(client, **body):
    response = client.post("/v1/inspect/attention", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- the page
class _Page(HTMLParser):
    """Labels (for= ids and their text), element ids, and the attributes that could load or run anything."""

    def __init__(self):
        super().__init__()
        self.ids, self.labels, self.loads, self.handlers = set(), {}, [], []
        self._label = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "label":
            self._label = [attrs.get("for"), ""]
        for name, value in attrs.items():
            if name in ("src", "href") or (tag == "link"):
                self.loads.append((tag, name, value))
            if name.startswith("on"):
                self.handlers.append((tag, name))
        if "aria-label" in attrs and "id" in attrs:
            self.labels.setdefault(attrs["aria-label"], attrs["id"])

    def handle_data(self, data):
        if self._label is not None:
            self._label[1] += data

    def handle_endtag(self, tag):
        if tag == "label" and self._label is not None:
            target, text = self._label
            if target:
                self.labels[text.strip()] = target
            self._label = None


def test_the_page_is_served_with_every_control_labelled(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = _Page()
    page.feed(response.text)
    for label in ("System prompt", "Max new tokens", "Temperature", "Top-k", "Top-p", "Min-p",
                  "Repetition penalty", "Stop sequences", "Seed", "Top alternatives per token", "API key",
                  "Message", "Layer", "Head"):
        assert label in page.labels, f"no <label> for {label!r}"
        assert page.labels[label] in page.ids, f"the label {label!r} points at no element"
    for choice in ("Chat", "Raw completion", "Greedy", "Sampling", "Stream output"):
        assert choice in response.text
    assert {"tab-text", "tab-tokens", "tab-attention", "attention-canvas", "ttft", "tps"} <= page.ids


def test_the_page_is_self_contained_and_writes_text_as_text(client):
    html = client.get("/").text
    page = _Page()
    page.feed(html)
    assert page.loads == [], f"the page loads something: {page.loads}"      # no CDN, no other file
    assert page.handlers == [], "inline on* handlers: the script wires its own listeners"
    assert not re.search(r"https?://", html.split("<script>")[1]), "the script calls an absolute URL"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in html, f"the page uses {sink}: model and user text must go in as text"


def test_the_page_needs_no_key(folder):
    app = create_app(folder, ServeConfig(**CONFIG, api_key="sesame"))
    with TestClient(app) as client:
        assert app.state.runtime.wait(timeout=60)
        assert client.get("/").status_code == 200
        for refused in (client.get("/v1/inspect/model"), client.post("/v1/inspect/attention", json={"prompt": "hi"})):
            assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        allowed = client.post("/v1/inspect/attention", json={"prompt": "hi"},
                              headers={"Authorization": "Bearer sesame"})
        assert allowed.status_code == 200


def test_while_loading_the_endpoints_answer_503(folder):
    app = create_app(folder, ServeConfig(**CONFIG))
    client = TestClient(app)               # no `with`: the lifespan does not run, the model never loads
    assert client.get("/").status_code == 200
    response = client.post("/v1/inspect/attention", json={"prompt": "hi"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "unavailable_error"
    assert client.get("/v1/inspect/model").status_code == 503


def test_a_model_without_chat_template_says_so(tmp_path):
    folder = save_tiny_chat_model(tmp_path / "no-template")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    app = create_app(folder, ServeConfig(**CONFIG))
    with TestClient(app) as client:
        assert app.state.runtime.wait(timeout=60)
        assert client.get("/v1/inspect/model").json()["chat_template"] is False    # the page offers raw mode only
        response = client.post("/v1/inspect/attention", json={"messages": MESSAGES})
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
        assert "no chat template" in response.json()["error"]["message"]
        assert client.post("/v1/inspect/attention", json={"prompt": "hello"}).status_code == 200


# ---------------------------------------------------------------- the model and its attention
def test_model_inspection(client, llm):
    info = client.get("/v1/inspect/model").json()
    assert info["model"] == "tiny-chat" and info["num_layers"] == 2 and info["num_heads"] == 4
    assert info["context_window"] == 512 and info["chat_template"] is True
    assert info["max_attention_tokens"] == playground.MAX_ATTENTION_TOKENS
    assert info["card"]["parameters"] == llm.model.num_parameters()


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_attention_over_a_prompt_equals_inspection(client, llm, layer):
    text = "the quick brown fox jumps over the lazy dog"
    out = attention(client, prompt=text, layer=layer)
    tokens, expected = attention_maps(llm.model, llm.tokenizer, text, layer)
    T = len(tokens)
    assert out["tokens"] == tokens and out["token_ids"] == llm.tokenizer.encode(text)
    assert out["layer"] == layer % 2 and out["heads"] == [0, 1, 2, 3] and out["num_layers"] == 2
    assert out["prompt_tokens"] == T and out["truncated"] is False
    got = maps(out)
    assert got.shape == (4, T, T)
    torch.testing.assert_close(got, expected.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(4, T, dtype=torch.double), atol=1e-4, rtol=0)
    assert bool((got.triu(1) == 0).all()), "a decoder's query attends to a later key"


def test_attention_over_messages_uses_the_chat_template(client, llm):
    out = attention(client, messages=MESSAGES, layer=1, head=2)
    ids = llm.tokenizer.encode(llm.format_chat(MESSAGES), add_special_tokens=False)
    assert out["token_ids"] == ids
    # the same tokens the server generates from (its /tokenize renders the template the same way)
    assert client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"] == ids
    tokens, expected = attention_maps(llm.model, llm.tokenizer, ids, 1)
    assert out["tokens"] == tokens and out["heads"] == [2]
    torch.testing.assert_close(maps(out), expected[2:3].double(), atol=1e-6, rtol=0)
    assert out["tokens"][0] == "<|im_start|>"


def test_a_long_prompt_is_cut_to_the_first_tokens(client, llm):
    text = " ".join(["hello world, hello there"] * 80)
    ids = llm.tokenizer.encode(text)
    assert len(ids) > playground.MAX_ATTENTION_TOKENS
    out = attention(client, prompt=text, head=0)
    cap = playground.MAX_ATTENTION_TOKENS
    assert out["truncated"] is True and out["prompt_tokens"] == len(ids) and out["max_tokens"] == cap
    assert out["token_ids"] == ids[:cap] and len(out["tokens"]) == cap
    _, expected = attention_maps(llm.model, llm.tokenizer, ids[:cap], 0)
    torch.testing.assert_close(maps(out), expected[:1].double(), atol=1e-6, rtol=0)


def test_the_attention_forward_runs_on_the_engine_thread_during_decoding(client, llm, monkeypatch):
    threads = []

    def spy(*args, **kwargs):                  # the real function, noting which thread calls it
        threads.append(threading.current_thread().name)
        return attention_maps(*args, **kwargs)
    monkeypatch.setattr(playground, "attention_maps", spy)
    engine = client.app.state.runtime.engine
    ids = llm.tokenizer.encode("a stitch in time")
    config = llm.make_config(max_new_tokens=400, eos_token_id=[])
    alone = engine.complete(ids, config)[0].text
    done = {}
    decoding = threading.Thread(target=lambda: done.update(text=engine.complete(ids, config)[0].text))
    decoding.start()
    deadline = time.monotonic() + 10
    while engine.running == 0 and time.monotonic() < deadline:   # the decode has joined the batch
        time.sleep(0.001)
    steps = engine.steps
    out = attention(client, prompt="stop here and wait", layer=1)
    assert "text" not in done and engine.steps > steps, "the decode was not running meanwhile"
    decoding.join(timeout=60)
    assert threads == ["gencycle-engine"]
    _, expected = attention_maps(llm.model, llm.tokenizer, "stop here and wait", 1)
    torch.testing.assert_close(maps(out), expected.double(), atol=1e-6, rtol=0)
    assert done["text"] == alone, "the attention forward changed a running greedy decode"


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": "hi", "layer": 2}, "layer", "the model has 2 layers"),
    ({"prompt": "hi", "layer": -3}, "layer", "got -3"),
    ({"prompt": "hi", "head": 4}, "head", "4 attention heads"),
    ({"prompt": "hi", "head": -1}, "head", "got -1"),
    ({"prompt": "hi", "messages": MESSAGES}, "prompt", "exactly one of"),
    ({}, "prompt", "exactly one of"),
    ({"prompt": ""}, "prompt", "empty"),
    ({"messages": []}, "messages", "at least one message"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "must be one of"),
    ({"prompt": "hi", "layer": "top"}, "layer", "integer"),
    ({"prompt": 3}, "prompt", "string"),
])
def test_bad_requests_get_a_clear_400(client, body, param, words):
    response = client.post("/v1/inspect/attention", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"], error["message"]


def test_a_body_that_is_not_json_gets_a_400(client):
    for raw in (b"{not json", b"[1, 2]", b""):
        response = client.post("/v1/inspect/attention", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
