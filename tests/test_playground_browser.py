"""The playground in a real browser (issue 14, point 6): Playwright drives Debian's chromium against a
real `gencycle serve` process on a tiny random chat model saved in the test.

The tests type a prompt, change the temperature, max new tokens, seed and stop sequences, generate
(streamed and not), read the streamed text, open the token view and the attention map, and save
screenshots to runs/playground/. What the page shows is checked against the server's own answer to
the same request body (the one the page sent, caught from the network), and the attention map's
cells against /v1/inspect/attention.

The model is fine-tuned in the fixture (a few hundred steps on one conversation) to answer "Show me
a picture" with an HTML tag, so that real model text carries `<img src=x onerror=alert(1)>`: the
page must show it as text and create no element.

The last test serves the packaged SmolLM2-135M-Instruct (skipped when it is not installed) and
copies its token-view screenshot to docs/playground.png, the README's picture.

Needs /usr/bin/chromium (`apt-get install chromium`; Playwright's own browser download cannot
reach this machine): skipped with that reason without it. Marked slow (on 2 shared cores about
30-45 s for the tiny model's five tests, the server start and the tuning included, and 40-60 s more
for the packaged model): `make test-all` runs it.
"""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from tiny_llm import save_tiny_chat_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "runs" / "playground"
README_SHOT = ROOT / "docs" / "playground.png"
PAYLOAD = "<img src=x onerror=alert(1)>"
PICTURE = "Show me a picture"
HEALTH_TIMEOUT = 90.0
DURATION = re.compile(r"^\d+(\.\d+)? (ms|s)$")       # the stats: "123 ms", "1.25 s"
RATE = re.compile(r"^\d+(\.\d+)? tokens/s$")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install chromium): Playwright's own browser download cannot reach this machine"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
expect = sync_api.expect


# ---------------------------------------------------------------- the model, the server, the browser
def tune_to_answer_with_html(folder: Path) -> None:
    """Fine-tune the tiny model (transformers, in place) so that its greedy reply to PICTURE is PAYLOAD."""
    import transformers

    from gencycle.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PICTURE}])
    ids = torch.tensor([tokenizer.encode(prompt + PAYLOAD + "<|im_end|>", add_special_tokens=False)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM.from_pretrained(folder)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(150):
            loss = model(ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.save_pretrained(folder)
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gencycle_command() -> list[str]:
    script = Path(sys.executable).with_name("gencycle")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gencycle.cli"]


@contextlib.contextmanager
def gencycle_serve(model: Path | None, log_path: Path, health_timeout: float = HEALTH_TIMEOUT):
    """A `gencycle serve` process on a free loopback port (eager decoding, no embedding model),
    healthy within `health_timeout` seconds; yields its base URL, then stops it."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    command = [*gencycle_command(), "serve", *([] if model is None else [str(model)]), "--host", "127.0.0.1",
               "--port", str(port), "--no-compile", "--embedding-model", "none", "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + health_timeout
            while True:
                if process.poll() is not None:
                    pytest.fail(f"gencycle serve exited with {process.returncode}:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"gencycle serve was not healthy within {health_timeout:.0f} s:\n"
                                f"{log_path.read_text()}")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`gencycle serve` on the tuned tiny model; yields its base URL."""
    folder = save_tiny_chat_model(tmp_path_factory.mktemp("browser") / "tiny-chat")
    tune_to_answer_with_html(folder)
    with gencycle_serve(folder, folder.parent / "serve.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def open_page(browser, base: str, model_name: str):
    """The playground in a fresh browser context, once it says the server is ready."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
    try:
        page = context.new_page()
        page.dialogs = []                                   # an alert() would mean model text ran as code
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(base + "/")
        expect(page.locator("#health")).to_have_text("ready", timeout=20_000)
        expect(page.locator("#model-name")).to_have_text(model_name)
        yield page
        assert page.errors == [], f"the page threw: {page.errors}"
    finally:
        context.close()


@pytest.fixture
def page(browser, server):
    with open_page(browser, server, "tiny-chat") as page:
        yield page


def screenshot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    return path


def generate(page, path: str):
    """Press Generate; -> (the request body the page sent, the response) once the reply is finished."""
    with page.expect_request(lambda r: r.url.endswith(path) and r.method == "POST") as caught:
        page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("button", name="Generate")).to_be_enabled(timeout=30_000)
    request = caught.value
    return request.post_data_json, request.response()


def replay(server: str, path: str, body: dict) -> dict:
    """The same request, not streamed: what the server itself answers."""
    body = {**body, "stream": False}
    body.pop("stream_options", None)
    response = httpx.post(server + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- the tests
def test_chat_streams_with_the_settings_typed(page, server):
    page.get_by_label("Sampling").check()
    page.get_by_label("Temperature", exact=True).fill("0.9")
    page.get_by_label("Max new tokens").fill("12")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("System prompt").fill("You answer briefly.")
    # count the text's changes as they land (streamed: several deltas, not one final text)
    page.evaluate("""() => { window.deltas = 0;
        new MutationObserver((records) => { window.deltas += records.length; })
            .observe(document.getElementById('transcript'), {subtree: true, characterData: true}); }""")
    page.get_by_label("Message").fill("hello there")
    body, response = generate(page, "/v1/chat/completions")

    assert body["temperature"] == 0.9 and body["max_tokens"] == 12 and body["seed"] == 7
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "You answer briefly."},
                                {"role": "user", "content": "hello there"}]
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert response.headers["content-type"].startswith("text/event-stream")
    answer = replay(server, "/v1/chat/completions", body)["choices"][0]
    reply = page.locator(".msg.assistant .body").last
    expect(reply).to_have_text(answer["message"]["content"])
    assert page.evaluate("window.deltas") > 1, "the reply did not arrive as a stream of deltas"
    expect(page.locator("#finish")).to_have_text(answer["finish_reason"])
    expect(page.locator("#ttft")).to_have_text(DURATION)
    expect(page.locator("#tps")).to_have_text(RATE)
    expect(page.locator(".msg.user .body")).to_have_text("hello there")
    screenshot(page, "chat")

    # the token view: one coloured span per token, the alternatives on hover
    page.get_by_role("tab", name="Token view").click()
    tokens = page.locator("#tokens .token")
    expected = answer["logprobs"]["content"]
    expect(tokens).to_have_count(len(expected))
    assert "".join(t["token"] for t in expected) == answer["message"]["content"]
    first = expected[0]
    tokens.first.hover()
    tip = page.locator("#token-tip")
    expect(tip).to_be_visible()
    in_top = any(alt["token"] == first["token"] or alt["logprob"] == first["logprob"] for alt in first["top_logprobs"])
    expect(tip.locator("tr")).to_have_count(len(first["top_logprobs"]) + (0 if in_top else 1))
    expect(tip.locator("tr.chosen")).to_have_count(1)
    colours = {tokens.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(len(expected))}
    assert len(colours) > 1, "every token has the same colour: the probabilities are not shown"
    screenshot(page, "tokens")

    # the attention map of the prompt: layer and head pickers, drawn on the canvas
    page.get_by_role("tab", name="Attention map").click()
    note = page.locator("#attention-note")
    expect(note).to_contain_text("Layer 0, head 0, over the prompt of the last request")
    layer, head = page.get_by_label("Layer", exact=True), page.get_by_label("Head", exact=True)
    expect(layer.locator("option")).to_have_count(2)
    expect(head.locator("option")).to_have_count(5)        # the mean and 4 heads
    layer.select_option("1")
    head.select_option("3")
    expect(note).to_contain_text("Layer 1, head 3")
    maps = httpx.post(server + "/v1/inspect/attention", json={"messages": body["messages"], "layer": 1, "head": 3},
                      timeout=30).json()
    T = len(maps["tokens"])
    expect(note).to_contain_text(f"{T} tokens")
    canvas = page.locator("#attention-canvas")
    margin, cell = float(canvas.get_attribute("data-margin")), float(canvas.get_attribute("data-cell"))
    assert canvas.bounding_box()["width"] == pytest.approx(margin + T * cell, abs=1)
    for i, j in ((0, 0), (T - 1, 0), (T - 1, T - 1), (T // 2, T // 3)):
        canvas.hover(position={"x": margin + (j + 0.5) * cell, "y": margin + (i + 0.5) * cell})
        readout = page.locator("#attention-readout")
        expect(readout).to_contain_text(f"query {i} ")
        expect(readout).to_contain_text(f"key {j} ")
        expect(readout).to_contain_text(f": {maps['attention'][0][i][j]:.4f}")
    colours = page.evaluate("""() => { const c = document.getElementById('attention-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const seen = new Set();
        for (let k = 0; k < d.length; k += 4 * 7) seen.add(d[k] + ',' + d[k + 1] + ',' + d[k + 2]);
        return seen.size; }""")
    assert colours > 8, "the attention map is not drawn"
    page.locator("#view-attention").evaluate("panel => { panel.scrollTop = 0; }")
    canvas.hover(position={"x": margin + 2.5 * cell, "y": margin + 6.5 * cell})    # a readout in the picture
    screenshot(page, "attention")


def test_raw_completion_not_streamed_with_a_stop_sequence(page, server):
    prompt = "the quick brown fox"
    full = replay(server, "/v1/completions", {"prompt": prompt, "max_tokens": 16, "temperature": 0})
    text = full["choices"][0]["text"]
    stop = next((text[k:k + 2] for k in range(2, len(text) - 2) if text[k:k + 2].strip() == text[k:k + 2]
                 and "\\" not in text[k:k + 2]), None)
    assert stop is not None, f"no stop sequence to pick in {text!r}"
    page.get_by_label("Raw completion").check()
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.get_by_label("System prompt")).to_be_hidden()
    page.get_by_label("Greedy").check()
    expect(page.get_by_label("Temperature", exact=True)).to_be_disabled()
    page.get_by_label("Stream output").uncheck()
    page.get_by_label("Max new tokens").fill("16")
    page.get_by_label("Stop sequences").fill(stop)
    page.get_by_label("Top alternatives per token").fill("3")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    body, response = generate(page, "/v1/completions")

    assert body == {"prompt": prompt, "max_tokens": 16, "temperature": 0, "stop": [stop], "logprobs": 3,
                    "stream": False}
    assert response.headers["content-type"].startswith("application/json")
    expected = text[:text.find(stop)]
    expect(page.locator("#completion-prompt")).to_have_text(prompt)
    expect(page.locator("#completion-output")).to_have_text(expected)
    expect(page.locator("#finish")).to_have_text("stop")
    expect(page.locator("#ttft")).to_contain_text("not streamed")
    page.get_by_role("tab", name="Token view").click()
    answer = replay(server, "/v1/completions", body)["choices"][0]
    expect(page.locator("#tokens .token")).to_have_count(len(answer["logprobs"]["tokens"]))
    screenshot(page, "completion")


def test_model_and_user_html_is_shown_as_text(page, server):
    answer = replay(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": PICTURE}],
                                                     "temperature": 0, "max_tokens": 24})
    assert answer["choices"][0]["message"]["content"] == PAYLOAD, "the tuned model does not answer with the tag"
    page.get_by_label("Greedy").check()
    page.get_by_label("Max new tokens").fill("24")
    page.get_by_label("Message").fill(PICTURE)
    generate(page, "/v1/chat/completions")
    expect(page.locator(".msg.assistant .body").last).to_have_text(PAYLOAD)

    page.get_by_label("Message").fill(f"and this one: {PAYLOAD}")        # the user's own text
    body, _ = generate(page, "/v1/chat/completions")
    assert body["messages"] == [{"role": "user", "content": PICTURE}, {"role": "assistant", "content": PAYLOAD},
                                {"role": "user", "content": f"and this one: {PAYLOAD}"}]   # the conversation so far
    expect(page.locator(".msg.user .body").last).to_have_text(f"and this one: {PAYLOAD}")
    page.get_by_role("tab", name="Token view").click()
    page.get_by_role("tab", name="Attention map").click()
    expect(page.locator("#attention-note")).to_contain_text("Layer 0")
    page.get_by_role("tab", name="Text").click()
    page.wait_for_timeout(300)                                            # an onerror would have fired by now
    assert page.locator("img").count() == 0, "model or user text became an element"
    assert page.evaluate("document.querySelectorAll('#transcript *').length") == 4 * 3   # 4 messages, 2 spans each
    assert page.dialogs == []
    screenshot(page, "html-as-text")


def test_stop_ends_a_stream_and_frees_its_row(page, server):
    prompt = "a stitch in time"          # the tiny model's greedy continuation runs to the window (about 1 s)
    full = replay(server, "/v1/completions", {"prompt": prompt, "temperature": 0, "max_tokens": 480})["choices"][0]
    assert full["finish_reason"] == "length"
    page.get_by_label("Raw completion").check()
    page.get_by_label("Greedy").check()
    page.get_by_label("Max new tokens").fill("480")                   # the context window is 512
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Generate").click()
    output = page.locator("#completion-output")
    expect(output).not_to_have_text("")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#finish")).to_have_text("stopped")
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    shown = output.text_content()
    assert full["text"].startswith(shown) and len(shown) < len(full["text"]), "Stop did not cut the stream"
    deadline = time.monotonic() + 10                                   # the server drops the row at a step
    while time.monotonic() < deadline and _running(server) != 0:
        time.sleep(0.1)
    assert _running(server) == 0


def _running(server: str) -> float:
    metrics = httpx.get(server + "/metrics", timeout=10).text
    return float(re.search(r"^gencycle:num_requests_running\{[^}]*\} (\S+)$", metrics, re.M).group(1))


def test_errors_are_shown_and_nothing_is_lost(page, server):
    page.get_by_label("Sampling").check()
    page.get_by_label("Temperature", exact=True).fill("3")               # outside [0, 2]: the server says so
    page.get_by_label("Message").fill("hello")
    page.get_by_role("button", name="Generate").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("temperature must be in [0, 2], got 3")
    expect(page.get_by_label("Message")).to_have_value("hello")         # given back, to fix and retry
    expect(page.locator(".msg")).to_have_count(0)
    page.get_by_label("Stop sequences").fill("a\nb\nc\nd\ne")
    page.get_by_role("button", name="Generate").click()
    expect(alert).to_contain_text("at most 4")
    page.get_by_role("button", name="Reset to defaults").click()
    expect(page.get_by_label("Temperature", exact=True)).to_have_value("0.7")
    expect(page.get_by_label("Stop sequences")).to_have_value("")



def test_the_packaged_model_in_the_playground(browser, tmp_path):
    """The README's picture: the packaged SmolLM2-135M-Instruct answering in the playground, its
    reply's tokens coloured by probability (runs/playground/smollm2-*.png, copied to docs/)."""
    from gencycle.assets import DEFAULT_MODEL, PACKAGED, package_dir
    if package_dir(PACKAGED[DEFAULT_MODEL][0]) is None:
        pytest.skip(f"the packaged {DEFAULT_MODEL} is not installed")
    question = "What is the capital of France?"
    with gencycle_serve(None, tmp_path / "serve.log", health_timeout=300) as base, \
            open_page(browser, base, DEFAULT_MODEL) as page:
        expect(page.locator("#model-shape")).to_contain_text("30 layers · 9 heads")
        page.get_by_label("Greedy").check()
        page.get_by_label("Max new tokens").fill("32")
        page.get_by_label("Message").fill(question)
        body, _ = generate(page, "/v1/chat/completions")
        answer = replay(base, "/v1/chat/completions", body)["choices"][0]["message"]["content"]
        assert "Paris" in answer
        expect(page.locator(".msg.assistant .body").last).to_have_text(answer)
        screenshot(page, "smollm2-chat")
        page.get_by_role("tab", name="Token view").click()
        page.locator("#tokens .token").filter(has_text="Paris").first.hover()
        expect(page.locator("#token-tip")).to_be_visible()
        shot = screenshot(page, "smollm2-tokens")
        page.get_by_role("tab", name="Attention map").click()
        page.get_by_label("Layer", exact=True).select_option("3")
        expect(page.locator("#attention-note")).to_contain_text("Layer 3, head 0", timeout=30_000)
        screenshot(page, "smollm2-attention")
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, README_SHOT)
