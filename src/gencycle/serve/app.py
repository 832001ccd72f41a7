"""The OpenAI-compatible HTTP app (FastAPI) over the continuous-batching engine.

    app = create_app("smollm2-135m-instruct", ServeConfig(max_concurrency=8))
    serve("path/to/model", ServeConfig(port=8000))        # what `gencycle serve` runs (uvicorn)

Endpoints: GET /health (503 while the model loads, then 200), GET /v1/models, POST /v1/completions,
POST /v1/chat/completions (the model's chat template), POST /v1/embeddings (the encoder of
--embedding-model, mean pooling), POST /tokenize and /detokenize, GET /metrics (Prometheus), and the
playground's routes (serve/playground.py) when that module is there.

Streaming is Server-Sent Events: `chat.completion.chunk` (or `text_completion`) objects with the
same id, the role alone in each choice's first delta, text deltas (with their tokens'
log-probabilities when asked), one chunk per choice with its finish reason, a last `choices: []`
chunk with the usage when stream_options.include_usage is set, then `data: [DONE]`. An error
after the stream began is sent as `data: {"error": {...}}`, then `[DONE]`. A client that goes away
(mid-stream or while waiting for a non-streamed answer) has its rows freed at the next step.

/tokenize takes {"content"} (or "prompt"; "add_special": add the tokenizer's special tokens) or
{"messages"} (rendered with the chat template) and answers {"tokens": [ids], "count", "max_model_len"},
with "pieces" (each token's text) when "with_pieces" is true; /detokenize takes {"tokens"} and
answers {"content"}.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import json
import logging
import os
import struct
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..generation import generate
from ..generation.engine import EngineClosed, Event, QueueFull
from ..generation.stopping import cut_at_eos, find_stop
from .config import API_KEY_VARIABLE, ServeConfig
from .metrics import Metrics
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                       TokenizeRequest, invalid)
from .runtime import Runtime

log = logging.getLogger("gencycle.serve")
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
FINGERPRINT = f"gencycle-{__version__}"
RETRY_AFTER = "1"


# ------------------------------------------------------------------ key and body size, before any route
class Guard:
    """ASGI middleware: the API key (constant-time comparison) and the body-size limit (413), both
    answered in the OpenAI error shape before the app reads the request."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if self.api_key is not None and not (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)):
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                message = "Invalid API key" if given else "Missing API key (send 'Authorization: Bearer KEY')"
                return await _send_error(send, APIError(401, message, code="invalid_api_key"))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await _send_error(send, _too_large(self.max_body_bytes))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0                                   # read the body here, bounded
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await _send_error(send, _too_large(self.max_body_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()                             # then: the client's disconnect
        return await self.app(scope, replay, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body larger than {limit} bytes (the server's --max-body-bytes)",
                    code="request_too_large")


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# ------------------------------------------------------------------ the app
def create_app(model: str | Path | None = None, config: ServeConfig | None = None,
               runtime: Runtime | None = None) -> FastAPI:
    """The FastAPI app serving `model` (default: the packaged SmolLM2). It loads the model in a
    background thread when it starts (uvicorn's lifespan), answering /health with 503 meanwhile."""
    config = config or ServeConfig()
    runtime = runtime or Runtime(model, config)
    metrics = Metrics(runtime.name)
    api_key = config.api_key if config.api_key is not None else os.environ.get(API_KEY_VARIABLE) or None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not runtime.ready and runtime.error is None:
            runtime.start()
        yield
        runtime.close()

    app = FastAPI(title="gencycle", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.runtime, app.state.metrics, app.state.config = runtime, metrics, config
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=config.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return _error_response(_from_validation(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error_response(APIError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(error).__name__}: {error}"))

    def ready() -> Runtime:
        if runtime.error is not None:
            raise APIError(503, f"the model could not be loaded: {runtime.error}")
        if not runtime.ready:
            raise APIError(503, "Loading model", headers={"Retry-After": RETRY_AFTER})
        return runtime

    def check_model(name: str | None) -> None:
        if name is not None and name != runtime.name:
            raise APIError(404, f"The model `{name}` does not exist (this server serves `{runtime.name}`)",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        if runtime.error is not None:
            return _error_response(APIError(503, f"the model could not be loaded: {runtime.error}"))
        if not runtime.ready:
            return JSONResponse({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                                status_code=503, headers={"Retry-After": RETRY_AFTER})
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        rt = ready()
        data = [{"id": rt.name, "object": "model", "created": rt.created, "owned_by": "gencycle",
                 "max_model_len": rt.window}]
        if rt.encoder is not None:
            data.append({"id": rt.encoder_name, "object": "model", "created": rt.created, "owned_by": "gencycle"})
        return {"object": "list", "data": data}

    @app.get("/metrics")
    async def prometheus():
        if runtime.ready:
            metrics.watch(runtime.engine)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        rt = ready()
        check_model(body.model)
        body.check(config.max_concurrency)
        if rt.llm.tokenizer.chat_template is None:
            raise invalid(f"{rt.name} has no chat template: use /v1/completions with a prompt", "messages")
        try:
            text = rt.llm.format_chat(body.conversation())
        except Exception as error:  # the template's own raise_exception, or a Jinja error
            raise invalid(f"the chat template refused these messages: {error}", "messages") from error
        ids = rt.llm.tokenizer.encode(text, add_special_tokens=False)
        return await _generate(rt, metrics, "chat", body, [ids], request, default_to_window=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        rt = ready()
        check_model(body.model)
        body.check(config.max_concurrency)
        prompts = []
        for prompt in body.prompts():
            if isinstance(prompt, str):
                prompts.append(rt.llm.tokenizer.encode(prompt))
            elif prompt and all(isinstance(t, int) and 0 <= t < rt.llm.model.config.vocab_size for t in prompt):
                prompts.append(list(prompt))
            else:
                raise invalid(f"prompt token ids must be integers in [0, {rt.llm.model.config.vocab_size})",
                              "prompt")
        if any(not ids for ids in prompts):
            raise invalid("the prompt is empty (it encodes to no token)", "prompt")
        return await _generate(rt, metrics, "completions", body, prompts, request, default_to_window=False)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        rt = ready()
        if rt.encoder is None:
            raise APIError(404, "this server has no embedding model (start it with --embedding-model PATH)",
                           param="model", code="model_not_found")
        if body.model is not None and body.model != rt.encoder_name:
            raise APIError(404, f"The model `{body.model}` is not an embedding model here (this server embeds with "
                           f"`{rt.encoder_name}`)", param="model", code="model_not_found")
        texts = body.texts()
        if body.dimensions is not None and body.dimensions != rt.encoder.dimension:
            raise invalid(f"dimensions must be {rt.encoder.dimension} for {rt.encoder_name} (it cannot be "
                          "shortened)", "dimensions")

        def embed():
            with rt.encoder_lock:
                vectors = rt.encoder.encode(texts)
                tokens = sum(len(rt.encoder.tokenizer.encode(t)) for t in texts)
            return vectors, tokens
        vectors, tokens = await asyncio.to_thread(embed)
        data = []
        for i, vector in enumerate(vectors.tolist()):
            value = vector if body.encoding_format == "float" else \
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": rt.encoder_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        rt = ready()
        tokenizer = rt.llm.tokenizer
        if body.messages is not None:
            if tokenizer.chat_template is None:
                raise invalid(f"{rt.name} has no chat template", "messages")
            messages = ChatCompletionRequest(messages=body.messages).conversation()
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt,
                                                tokenize=True)
        else:
            text = body.content if body.content is not None else body.prompt
            if text is None:
                raise invalid("give the text to tokenize as content (or prompt), or messages", "content")
            ids = tokenizer.encode(text, add_special_tokens=body.add_special)
        out = {"tokens": ids, "count": len(ids), "max_model_len": rt.window}
        if body.with_pieces:
            out["pieces"] = [tokenizer.decode([i]) for i in ids]
        return out

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        rt = ready()
        vocab = rt.llm.model.config.vocab_size
        if not all(0 <= t < vocab for t in body.tokens):
            raise invalid(f"token ids must be in [0, {vocab})", "tokens")
        return {"content": rt.llm.tokenizer.decode(body.tokens)}

    _include_playground(app)
    return app


def _include_playground(app: FastAPI) -> None:
    """The playground page (serve/playground.py, written alongside): included when it is there."""
    try:
        from . import playground
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.playground":
            raise
        return  # not written yet: the API works without it
    app.include_router(playground.router)


def _from_validation(error: RequestValidationError) -> APIError:
    """FastAPI / pydantic's 422 as OpenAI's 400, naming the first bad field."""
    problems = error.errors()
    if not problems:
        return invalid("invalid request body")
    first = problems[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return invalid(f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
    if first.get("type") == "missing" and not location:
        return invalid("the request needs a JSON body")
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return invalid(f"{param or 'body'}: {message}{more}", param)


# ------------------------------------------------------------------ generation
class _Channel:
    """Events from the engine's thread into this request's asyncio queue (cancellations are counted
    here: a client that left reads no more events)."""

    def __init__(self, metrics: Metrics, kind: str):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.metrics, self.kind = metrics, kind

    def sink(self, prompt: int):
        def put(event: Event) -> None:
            if event.finish_reason == "cancelled":
                self.metrics.finished(self.kind, "cancelled", 0, event.completion_tokens)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (prompt, event))
        return put


class _Timing:
    """Time to first token and inter-token latency of one sequence, for the metrics."""

    def __init__(self, metrics: Metrics, arrival: float):
        self.metrics, self.arrival, self.last, self.tokens = metrics, arrival, None, 0

    def update(self, event: Event) -> None:
        if event.completion_tokens > self.tokens:
            now = time.perf_counter()
            if self.last is None:
                self.metrics.first_token(now - self.arrival)
            else:
                self.metrics.inter_token((now - self.last) / (event.completion_tokens - self.tokens))
            self.last, self.tokens = now, event.completion_tokens


async def _generate(rt: Runtime, metrics: Metrics, kind: str, body, prompts: list[list[int]], request: Request,
                    default_to_window: bool):
    arrival = time.perf_counter()
    window, requested = rt.window, body.requested_tokens()
    for ids in prompts:
        if window is not None and len(ids) >= window:
            raise APIError(400, f"the prompt has {len(ids)} tokens and the model's context window is {window} "
                           "tokens: it does not fit (with room for at least one new token)", param="messages"
                           if kind == "chat" else "prompt", code="context_length_exceeded",
                           n_prompt_tokens=len(ids), n_ctx=window)
        if window is not None and requested is not None and len(ids) + requested > window:
            raise APIError(400, f"the prompt has {len(ids)} tokens and {requested} more were asked for, beyond "
                           f"the model's context window of {window} tokens", param="max_tokens",
                           code="context_length_exceeded", n_prompt_tokens=len(ids), n_ctx=window)
    logprobs = body.engine_logprobs()
    configs = []
    for ids in prompts:
        new = requested if requested is not None else (window - len(ids) if default_to_window and window else 16)
        configs.append(rt.llm.make_config(body.generation(new, logprobs is not None)))
    completion_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if body.num_beams > 1:
        return await _beam_search(rt, metrics, kind, body, prompts, configs, completion_id, created)

    channel = _Channel(metrics, kind)
    handles = []
    try:
        for p, (ids, config) in enumerate(zip(prompts, configs)):
            handles.append(rt.engine.submit(ids, config, n=body.n, logprobs=logprobs, on_event=channel.sink(p)))
    except QueueFull as error:
        for handle in handles:
            handle.cancel()
        raise APIError(503, f"the server is busy ({error}); retry shortly", code="server_overloaded",
                       headers={"Retry-After": RETRY_AFTER}) from error
    except EngineClosed as error:
        raise APIError(503, "the server is shutting down") from error
    except ValueError as error:
        for handle in handles:
            handle.cancel()
        raise invalid(str(error)) from error
    job = _Job(rt, metrics, kind, body, prompts, handles, channel, completion_id, created, arrival, logprobs)
    if body.stream:
        return StreamingResponse(job.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await job.collect(request)


class _Job:
    """The engine requests of one HTTP request (one per prompt, n sequences each) and their answer."""

    def __init__(self, rt, metrics, kind, body, prompts, handles, channel, completion_id, created, arrival,
                 logprobs):
        self.rt, self.metrics, self.kind, self.body = rt, metrics, kind, body
        self.prompts, self.handles, self.channel = prompts, handles, channel
        self.id, self.created, self.arrival, self.logprobs = completion_id, created, arrival, logprobs
        self.n = body.n
        self.total = len(prompts) * self.n
        self.timing = [_Timing(metrics, arrival) for _ in range(self.total)]
        self.finished = 0
        self.completion_tokens = [0] * self.total
        self.object = "chat.completion" if kind == "chat" else "text_completion"
        self.chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    async def events(self):
        """(choice index, event) until every sequence has finished."""
        while self.finished < self.total:
            prompt, event = await self.channel.queue.get()
            index = prompt * self.n + event.index
            self.timing[index].update(event)
            self.completion_tokens[index] = event.completion_tokens
            if event.finish_reason is not None:
                self.finished += 1
                if event.finish_reason in ("stop", "length"):
                    self.metrics.finished(self.kind, event.finish_reason, event.prompt_tokens if event.index == 0
                                          else 0, event.completion_tokens)
                    if self.finished == self.total:
                        self.metrics.end_to_end(time.perf_counter() - self.arrival)
            yield index, event

    def usage(self) -> dict:
        prompt_tokens = sum(len(ids) for ids in self.prompts)
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    # ---- the whole answer at once
    async def collect(self, request: Request) -> dict:
        texts, tokens = [[] for _ in range(self.total)], [[] for _ in range(self.total)]
        reasons: list[str | None] = [None] * self.total
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(request))
        try:
            async for index, event in self.events():
                if event.finish_reason in ("error", "cancelled"):
                    self.cancel()
                    raise APIError(500, f"generation failed: {event.error or event.finish_reason}")
                texts[index].append(event.text)
                tokens[index].extend(event.tokens)
                reasons[index] = event.finish_reason
        finally:
            watcher.cancel()
            self.cancel()
        choices = []
        for index in range(self.total):
            text = "".join(texts[index])
            if self.kind == "chat":
                choice = {"index": index, "message": {"role": "assistant", "content": text},
                          "logprobs": None if self.logprobs is None else {"content": _chat_logprobs(tokens[index])},
                          "finish_reason": reasons[index]}
            else:
                choice = {"index": index, "text": text,
                          "logprobs": None if self.logprobs is None else _completion_logprobs(tokens[index], 0),
                          "finish_reason": reasons[index]}
            choices.append(choice)
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.rt.name,
                "system_fingerprint": FINGERPRINT, "choices": choices, "usage": self.usage()}

    async def _watch_disconnect(self, request: Request) -> None:
        while True:
            await asyncio.sleep(0.25)
            if await request.is_disconnected():
                self.cancel()  # the rows leave at the next step; the answer is dropped
                return

    # ---- server-sent events
    def _chunk(self, choices: list[dict], usage: dict | None = None, with_usage: bool = False) -> str:
        chunk = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.rt.name,
                 "system_fingerprint": FINGERPRINT, "choices": choices}
        if with_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def stream(self):
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        offsets = [0] * self.total          # characters sent per choice (completions' text_offset)
        try:
            if self.kind == "chat":
                for index in range(self.total):
                    yield self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}], None, include_usage)
            async for index, event in self.events():
                if event.finish_reason in ("error", "cancelled"):
                    self.cancel()
                    error = APIError(500, f"generation failed: {event.error or event.finish_reason}")
                    yield f"data: {json.dumps(error.body())}\n\n"
                    break
                if event.text or event.tokens:
                    yield self._chunk([self._delta(index, event, offsets)], None, include_usage)
                if event.finish_reason is not None:
                    done = {"index": index, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}
                    if self.kind != "chat":
                        done = {"index": index, "text": "", "logprobs": None, "finish_reason": event.finish_reason}
                    yield self._chunk([done], None, include_usage)
            else:
                if include_usage:
                    yield self._chunk([], self.usage(), True)
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # a client that left: its rows go at the next step (no-op once finished)

    def _delta(self, index: int, event: Event, offsets: list[int]) -> dict:
        if self.kind == "chat":
            logprobs = None if self.logprobs is None else {"content": _chat_logprobs(event.tokens)}
            return {"index": index, "delta": {"content": event.text}, "logprobs": logprobs, "finish_reason": None}
        logprobs = None if self.logprobs is None else _completion_logprobs(event.tokens, offsets[index])
        offsets[index] += len(event.text)
        return {"index": index, "text": event.text, "logprobs": logprobs, "finish_reason": None}


def _chat_logprobs(tokens) -> list[dict]:
    return [{"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode("utf-8")),
             "top_logprobs": [{"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
                              for text, _, lp in t.top]} for t in tokens]


def _completion_logprobs(tokens, offset: int) -> dict:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{text: lp for text, _, lp in t.top} for t in tokens], "text_offset": offsets}


async def _beam_search(rt: Runtime, metrics: Metrics, kind, body, prompts, configs, completion_id, created):
    """num_beams > 1: `generate`'s beam search on the scheduler thread, between two steps (not streamed)."""
    def run(ids, config):
        out = generate(rt.llm.model, torch.tensor([ids]), config=config, tokenizer=rt.llm.tokenizer)
        return out[:, len(ids):].tolist()
    choices, completion_tokens = [], 0
    for p, (ids, config) in enumerate(zip(prompts, configs)):
        try:
            rows = await rt.run_on_model(functools.partial(run, ids, config))
        except QueueFull as error:
            raise APIError(503, f"the server is busy ({error}); retry shortly", code="server_overloaded",
                           headers={"Retry-After": RETRY_AFTER}) from error
        for k, row in enumerate(rows):
            kept = cut_at_eos(row, config.eos_token_ids)
            ended = len(kept) < len(row) and row[len(kept)] in config.eos_token_ids
            text = rt.llm.tokenizer.decode(kept, skip_special_tokens=True)
            cut = find_stop(text, config.stop) if config.stop else None
            text = text if cut is None else text[:cut]
            reason = "stop" if ended or cut is not None else "length"
            used = len(kept) + ended
            completion_tokens += used
            metrics.finished(kind, reason, len(ids) if k == 0 else 0, used)
            index = p * body.n + k
            if kind == "chat":
                choices.append({"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                "finish_reason": reason})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": reason})
    prompt_tokens = sum(len(ids) for ids in prompts)
    return {"id": completion_id, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created, "model": rt.name, "system_fingerprint": FINGERPRINT, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


# ------------------------------------------------------------------ running it
def _log_to_console(level: str) -> None:
    """gencycle's log lines (loading, ready, errors) on stderr, as uvicorn prints its own."""
    logger = logging.getLogger("gencycle")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level.upper())


def serve(model: str | Path | None = None, config: ServeConfig | None = None) -> int:
    """Run the server until interrupted (uvicorn); returns the exit status (1 if the model failed to load)."""
    import uvicorn
    config = config or ServeConfig()
    server: uvicorn.Server | None = None

    def stop():
        if server is not None:
            server.should_exit = True
    runtime = Runtime(model, config, on_failure=stop)
    app = create_app(model, config, runtime)
    _log_to_console(config.log_level)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                           access_log=config.log_level == "debug", timeout_graceful_shutdown=5))
    server.run()
    return 1 if runtime.error is not None else 0
