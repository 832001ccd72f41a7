"""The playground: a page at `GET /` and the two small endpoints it reads besides the OpenAI API.

    app.include_router(router)          # serve/app.py does this

- `GET /` -- the page (static/playground.html: one self-contained file, no CDN, no build step). It
  talks to `/v1/chat/completions` and `/v1/completions` (streamed, with logprobs) and to:
- `GET /v1/inspect/model` -- the served model's name, layers, heads, context window and card
  (`gencycle.inspection.model_card`), for the page's header and its layer and head pickers;
- `POST /v1/inspect/attention` -- the attention weights over a prompt, from
  `gencycle.inspection.attention_maps` on the served model:

      {"prompt": "text"} or {"messages": [{"role": ..., "content": ...}, ...]},
      "layer": 0 (default; negative counts from the end), "head": null (all heads) or an index
      -> {"object": "attention", "model", "tokens": [piece, ...], "token_ids", "prompt_tokens",
          "truncated", "max_tokens", "num_layers", "num_heads", "layer", "heads": [index, ...],
          "attention": [[[weight of key j for query i] ...] per head]}   (heads, T, T), rows sum to 1

  The prompt is tokenized as the completions endpoints tokenize it (a chat is rendered with the
  model's chat template, its special tokens written by the template), then cut to its first
  MAX_ATTENTION_TOKENS tokens (`truncated` says so): a (T, T) map per head is drawn on a canvas
  and sent as JSON, so it stays small. Weights are rounded to 6 decimals.

What the router expects of the app (serve/runtime.py's `Runtime`, as `request.app.state.runtime`):
`ready` (False while loading), `name`, `llm` (a gencycle LLM: `.model`, `.tokenizer`,
`.format_chat`), and `await run_on_model(function)`, which runs `function()` on the thread that
owns the model (the batching engine's scheduler, between two decoding steps), so the attention
forward never runs concurrently with decoding. Errors are answered in the OpenAI shape
`{"error": {"message", "type", "param", "code"}}`, whatever exception handlers the app has.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError

from ..inspection import attention_maps, model_card
from .protocol import APIError, ChatMessage, ROLES, _Body

MAX_ATTENTION_TOKENS = 256
PAGE = Path(__file__).with_name("static") / "playground.html"

router = APIRouter()


class AttentionRequest(_Body):
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    layer: int = 0
    head: int | None = None


@lru_cache(maxsize=1)
def _page(mtime: float) -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page."""
    if not PAGE.is_file():
        return _error(APIError(500, f"the playground page is missing from this installation: {PAGE}"))
    # no-store: a page changed on disk (a new version) is what the next visit gets
    return HTMLResponse(_page(PAGE.stat().st_mtime), headers={"Cache-Control": "no-store"})


@router.get("/v1/inspect/model")
async def inspect_model(request: Request) -> JSONResponse:
    """Name, shape and card of the served model."""
    try:
        llm = _loaded(request)
    except APIError as error:
        return _error(error)
    runtime = request.app.state.runtime
    cfg = llm.model.config
    card = model_card(llm.model)
    return JSONResponse({
        "object": "model_inspection", "model": runtime.name, "num_layers": _layers(cfg), "num_heads": cfg.num_heads,
        "context_window": None if cfg.position == "relative" else cfg.max_position_embeddings,
        "max_attention_tokens": MAX_ATTENTION_TOKENS, "chat_template": _has_template(llm.tokenizer),
        "card": {key: value if isinstance(value, (int, float)) else str(value) for key, value in card.items()}})


@router.post("/v1/inspect/attention")
async def inspect_attention(request: Request) -> JSONResponse:
    """Attention weights of one layer (all heads, or one) over a prompt's first MAX_ATTENTION_TOKENS tokens."""
    try:
        llm = _loaded(request)
        body = _parse(await request.body())
        ids = _prompt_ids(llm, body)
        cfg = llm.model.config
        layers, heads = _layers(cfg), cfg.num_heads
        if not -layers <= body.layer < layers:
            raise APIError(400, f"layer must be in [0, {layers - 1}] (or -{layers}..-1 from the end): the model "
                           f"has {layers} layers, got {body.layer}", "layer")
        if body.head is not None and not 0 <= body.head < heads:
            raise APIError(400, f"head must be in [0, {heads - 1}]: the model has {heads} attention heads per "
                           f"layer, got {body.head}", "head")
        shown = ids[:MAX_ATTENTION_TOKENS]
        runtime = request.app.state.runtime
        try:
            tokens, weights = await runtime.run_on_model(lambda: attention_maps(llm.model, llm.tokenizer, shown,
                                                                                body.layer))
        except (RuntimeError, ValueError) as error:  # the engine is full or closed, or the forward failed
            full = type(error).__name__ in ("QueueFull", "EngineClosed")
            raise APIError(503 if full else 500, f"could not compute the attention maps: {error}",
                           headers={"Retry-After": "1"} if full else None) from error
    except APIError as error:
        return _error(error)
    picked = list(range(heads)) if body.head is None else [body.head]
    maps = weights[picked].double().round(decimals=6).tolist()   # (heads, T, T)
    return JSONResponse({
        "object": "attention", "model": runtime.name, "tokens": tokens, "token_ids": shown,
        "prompt_tokens": len(ids), "truncated": len(ids) > len(shown), "max_tokens": MAX_ATTENTION_TOKENS,
        "num_layers": layers, "num_heads": heads, "layer": body.layer % layers, "heads": picked,
        "attention": maps})


# ---------------------------------------------------------------- helpers
def _loaded(request: Request):
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready or runtime.llm is None:
        raise APIError(503, "the model is still loading: try again shortly", headers={"Retry-After": "1"})
    return runtime.llm


def _parse(raw: bytes) -> AttentionRequest:
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object with `prompt` or `messages`")
    try:
        body = AttentionRequest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise APIError(400, f"{where}: {first['msg']}", where or None) from error
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of `prompt` (text) or `messages` (a conversation)", "prompt")
    return body


def _prompt_ids(llm, body: AttentionRequest) -> list[int]:
    """The prompt's token ids, as the completions endpoints make them."""
    if body.prompt is not None:
        ids = llm.tokenizer.encode(body.prompt)
    else:
        if not body.messages:
            raise APIError(400, "messages must hold at least one message", "messages")
        conversation = []
        for i, message in enumerate(body.messages):
            if message.role not in ROLES:
                raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message.role!r}",
                               f"messages.{i}.role")
            content = message.content
            if isinstance(content, list):
                content = "".join(part.text or "" for part in content)
            conversation.append({"role": message.role, "content": content or ""})
        try:
            text = llm.format_chat(conversation)
        except Exception as error:  # no chat template (ValueError), or a template that refuses these messages
            raise APIError(400, f"the model's chat template cannot render these messages: {error}",
                           "messages") from error
        ids = llm.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise APIError(400, "the prompt is empty: it has no tokens",
                       "prompt" if body.prompt is not None else "messages")
    return ids


def _layers(cfg) -> int:
    return cfg.num_layers if cfg.architecture != "encoder-decoder" else cfg.num_encoder_layers


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _error(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
