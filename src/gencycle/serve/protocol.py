"""The OpenAI API's request bodies (pydantic, via FastAPI), their checks, and the error shape.

Request fields follow the OpenAI reference (`messages` / `prompt`, `max_tokens` and
`max_completion_tokens`, `temperature`, `top_p`, `n`, `stop`, `seed`, `presence_penalty`,
`frequency_penalty`, `logprobs` / `top_logprobs`, `stream`, `stream_options`, `user`) with vLLM's
extensions (`top_k`, `min_p`, `repetition_penalty`, `min_tokens`, `ignore_eos`) and `num_beams` (beam search, not streamed).
Unknown fields are accepted and ignored, as vLLM does; known OpenAI fields that gencycle does not
implement (`logit_bias`, `tools`, `response_format` other than text, `echo`, `suffix`) are refused
with a 400 rather than ignored.

Every refusal is an `APIError`, answered as `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..generation import GenerationConfig

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
INT64 = 2 ** 63
ROLES = ("system", "developer", "user", "assistant", "tool")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               500: "server_error", 501: "not_supported_error", 503: "unavailable_error"}


class APIError(Exception):
    """An answer other than 200, in the OpenAI error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ERROR_TYPES.get(status, "server_error")
        self.headers, self.extra = headers or {}, extra

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class _Sampling(_Body):
    """The fields that completions and chat completions share."""
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    num_beams: int = 1
    logit_bias: dict[str, float] | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return tuple(s for s in stops if s)

    def check(self, max_n: int) -> None:
        """Ranges of the OpenAI reference; raises APIError (400) naming the field."""
        def number(name, low, high, low_open=False):
            value = getattr(self, name)
            if value is None:
                return
            if value != value or value > high or value < low or (low_open and value == low):
                interval = f"{'(' if low_open else '['}{low}, {high}]"
                raise invalid(f"{name} must be in {interval}, got {value}", name)
        number("temperature", 0, 2)
        number("top_p", 0, 1, low_open=True)
        number("presence_penalty", -2, 2)
        number("frequency_penalty", -2, 2)
        number("min_p", 0, 1)
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise invalid(f"repetition_penalty must be > 0, got {self.repetition_penalty}", "repetition_penalty")
        if self.top_k is not None and self.top_k < -1:
            raise invalid(f"top_k must be >= 0 (0 or -1: off), got {self.top_k}", "top_k")
        if not 1 <= self.n <= max_n:
            raise invalid(f"n must be in [1, {max_n}] (the server's --max-concurrency), got {self.n}", "n")
        if self.num_beams < 1:
            raise invalid(f"num_beams must be >= 1, got {self.num_beams}", "num_beams")
        if self.num_beams > 1:
            if self.stream:
                raise invalid("num_beams > 1 (beam search) gives its answer at the end: it cannot stream",
                              "num_beams")
            if self.n > self.num_beams:
                raise invalid(f"n ({self.n}) must be <= num_beams ({self.num_beams}) for beam search", "n")
            if self.temperature:
                raise invalid("beam search does not sample: leave temperature unset or 0 with num_beams > 1",
                              "temperature")
        if self.min_tokens < 0:
            raise invalid(f"min_tokens must be >= 0, got {self.min_tokens}", "min_tokens")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise invalid(f"max_tokens must be >= 1, got {self.max_tokens}", "max_tokens")
        stops = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else self.stop
        if len(stops) > MAX_STOP:
            raise invalid(f"stop takes at most {MAX_STOP} strings, got {len(stops)}", "stop")
        if self.seed is not None and not -INT64 <= self.seed < INT64:
            raise invalid("seed must fit in 64 bits", "seed")
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true", "stream_options")
        if self.logit_bias:
            raise invalid("logit_bias is not supported by this server", "logit_bias")

    def generation(self, max_new_tokens: int, logprobs: bool) -> GenerationConfig:
        """The GenerationConfig of this request (OpenAI's defaults: temperature 1, top_p 1)."""
        beams = self.num_beams > 1
        if beams and logprobs:
            raise invalid("logprobs are not available with beam search (num_beams > 1)", "logprobs")
        temperature = 1.0 if self.temperature is None else self.temperature
        values: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, min_new_tokens=min(self.min_tokens, max_new_tokens), stop=self.stops(),
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if self.top_k in (None, -1) else self.top_k,
            min_p=self.min_p or 0.0, repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            seed=None if self.seed is None else self.seed % INT64)
        if self.ignore_eos:
            values.update(eos_token_id=())
        if beams:
            values.update(num_beams=self.num_beams, num_return_sequences=self.n)
        elif temperature > 0:
            values.update(do_sample=True, temperature=temperature)
        try:
            return GenerationConfig(**values)
        except ValueError as error:
            raise invalid(str(error)) from error


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list | None = None
    response_format: dict | None = None

    def check(self, max_n: int) -> None:
        super().check(max_n)
        if not self.messages:
            raise invalid("messages must hold at least one message", "messages")
        for i, message in enumerate(self.messages):
            if message.role not in ROLES:
                raise invalid(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message.role!r}",
                              f"messages.{i}.role")
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if part.type != "text" or part.text is None:
                        raise invalid(f"messages[{i}].content[{j}]: only text parts ({{'type': 'text', 'text': "
                                      f"...}}) are supported, got type {part.type!r}", f"messages.{i}.content")
        if self.max_completion_tokens is not None and self.max_completion_tokens < 1:
            raise invalid(f"max_completion_tokens must be >= 1, got {self.max_completion_tokens}",
                          "max_completion_tokens")
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
                raise invalid(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}",
                              "top_logprobs")
            if not self.logprobs:
                raise invalid("top_logprobs needs logprobs set to true", "top_logprobs")
        if self.tools:
            raise invalid("tools (function calling) are not supported by this server", "tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise invalid("response_format other than text is not supported by this server", "response_format")

    def conversation(self) -> list[dict]:
        """The messages as the chat template takes them (text parts joined)."""
        out = []
        for message in self.messages:
            content = message.content
            if isinstance(content, list):
                content = "".join(part.text for part in content)
            out.append({"role": message.role, "content": content or ""})
        return out

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def engine_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check(self, max_n: int) -> None:
        super().check(max_n)
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise invalid(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}", "logprobs")
        if self.echo:
            raise invalid("echo is not supported by this server", "echo")
        if self.suffix:
            raise invalid("suffix is not supported by this server", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise invalid("best_of other than n is not supported by this server", "best_of")
        if isinstance(self.prompt, list) and not self.prompt:
            raise invalid("prompt must not be an empty list", "prompt")

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text, or its token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def engine_logprobs(self) -> int | None:
        return self.logprobs


class EmbeddingRequest(_Body):
    input: str | list[str]
    model: str | None = None
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise invalid("input must not be empty", "input")
        if self.encoding_format not in ("float", "base64"):
            raise invalid(f"encoding_format must be 'float' or 'base64', got {self.encoding_format!r}",
                          "encoding_format")
        return texts


class TokenizeRequest(_Body):
    content: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special: bool = False
    add_generation_prompt: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    tokens: list[int] = Field(default_factory=list)
