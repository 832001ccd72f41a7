"""The continuous-batching engine: many requests decoded together, rows joining and leaving at step boundaries.

    engine = Engine(model, tokenizer, max_batch=16)          # starts the scheduler thread
    for event in engine.stream(prompt_ids, GenerationConfig(max_new_tokens=64)):
        print(event.text, end="")
    engine.submit(prompt_ids, config, n=2, logprobs=5, on_event=callback)   # from any thread
    engine.close()

One scheduler thread owns the model and one running batch: a KVCache whose rows are requests'
sequences (model/cache.py keeps rows right-aligned, each with its own start). Each turn of its loop:

  1. admit: waiting requests run their prefill (several together, left-padded, up to
     `max_prefill_tokens`) in a cache of their own, whose rows then join the batch's cache: into
     the rows freed by finished requests (`insert`), once a bigger batch is made if there are
     too few (the running rows copied into it);
  2. pick: every row's next token from its last logits, with its own settings (temperature, top-k,
     top-p, min-p, penalties, seed: its own torch.Generator), and its text: stop strings are
     found on the decoded text; EOS, a stop string, max_new_tokens or the context window end it;
  3. report: an `Event` per row and turn (the new text, its tokens' log-probabilities when asked,
     the finish reason on the last) through the request's callback, which must return quickly
     (the server hands it to its asyncio loop with `call_soon_threadsafe`);
  4. step: one forward of the whole batch, one token per row, the attention mask read from the
     rows' starts. Rows that finished or were cancelled become holes that the next joiners fill;
     when holes stay unfilled for a few steps, the running rows move to a smaller batch. Slots
     that no row uses any more are dropped (`compact`) before the cache would have to grow.

A row's numbers do not depend on its neighbours: the prefill and each step see only its own valid
slots, and its sampler draws from its own generator, so a greedy request gives the same tokens
alone or in a busy batch, and a seeded one the same sample (up to floating-point summation order
in batched matrix products; tests/test_engine.py checks it on tiny models). Sampling matches
`generate` for one prompt: the same processors (processors.py) with per-row values, in the same
order, and the same draw from the row's generator.

Log-probabilities are those of the model's own distribution (log_softmax of its logits, before
any penalty or sampling filter), as vLLM reports them by default. `Event.completion_tokens` counts
every token generated, the EOS that ended a row included. `n > 1` runs n rows after one prefill;
with a seed s, sequence i draws with seed s + i. Beam search is not continuous: run `generate`
through `engine.call` (between two steps, on the scheduler thread).

Compiled steps (`compiled=True`, or a model given to `compile_decoding`): the batch's cache is a
StaticKVCache of a fixed number of rows (a power of two up to max_batch, holes included) and slots
(a power of two), and each step runs the model's compiled `decode_step` (compiled.py) over all of
them, the attention bias masking each row's invalid slots. Torch builds one graph per (rows, slots)
pair: `warm_up()` builds those of every row count at the first slot size before requests come;
a batch that outgrows its slots moves to the next size, whose graph is built then if it was not
(steps compiled ahead of time have one library per row count, for every slot count: nothing to build).
`warm_up()` also times a compiled and an eager step of each row count and keeps the faster one
(`step_choice`): a compiled step attends to every slot, so on a CPU a batch of long rows can run
faster eagerly (the ahead-of-time SmolLM2 int4 step did on this project's 2-core Xeon while
it used PyTorch's int4 kernel; now the compiled step wins at every row count there).

Partial: no chunked prefill (a long prompt's prefill pauses the running rows for its duration) and
no prefix caching; encoder-decoder models are refused (their cross-attention caches do not join).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..model.cache import StaticKVCache
from .compiled import cache_slots, compile_decoding, current_step
from .config import GenerationConfig
from .decoding import resolve_config
from .processors import min_p as min_p_filter
from .processors import no_repeat_ngram, presence_frequency_penalty
from .stopping import find_stop, partial_stop_length

log = logging.getLogger("gencycle.engine")

MAX_LOGPROBS = 20
SLOT_CHUNK = 256        # the batch's cache grows by at least this many slots at a time
IDLE_HOLE_STEPS = 8     # holes left unfilled this many steps (nothing waiting): a smaller batch


class QueueFull(RuntimeError):
    """The engine's queue of waiting requests is full: try again later."""


class EngineClosed(RuntimeError):
    """The engine was closed: it accepts no more requests."""


@dataclass
class TokenLogprob:
    """One generated token: its text (the part of the completion it adds, so the texts of a sequence's
    tokens join to its text), id, log-probability, and the most likely alternatives (text, id, logprob)."""
    text: str
    id: int
    logprob: float
    top: list[tuple[str, int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What one turn of the engine gives one sequence of a request.

    index: which of the request's n sequences. text: the new text (may be ""). tokens: the tokens
    behind that text, with log-probabilities (only when logprobs were asked). finish_reason: None
    while running, then "stop" (EOS or a stop string), "length" (max_new_tokens or the context
    window), "cancelled" or "error" (then `error` says what happened).
    """
    index: int
    text: str
    tokens: list[TokenLogprob]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class Request:
    """A submitted request: `cancel()` frees its rows at the next step boundary."""

    def __init__(self, prompt_ids: list[int], config: GenerationConfig, n: int, logprobs: int | None,
                 on_event: Callable[[Event], None]):
        self.prompt_ids, self.config, self.n, self.logprobs = prompt_ids, config, n, logprobs
        self.on_event = on_event
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class Completion:
    """One finished sequence (`Engine.complete`)."""
    text: str
    tokens: list[TokenLogprob]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class _Text:
    """A row's decoded text: what can be sent now (holding back a possible stop string's start and
    half-decoded UTF-8 characters) and which tokens it came from."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.stable = ""            # decoded text without a trailing half character
        self.sent = 0               # characters of `stable` already sent
        self.token_end = 0          # where the text of the last token sent ends
        self.pending: list[tuple[TokenLogprob, int]] = []   # (token, end offset of its text), not sent yet
        self.stopped = False
        self.incomplete = False     # the text ends in a half character (its token waits for the rest)

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token: int, entry: TokenLogprob | None) -> tuple[str, list[TokenLogprob]]:
        """A new token (not EOS) -> (text safe to send, tokens whose text it completes)."""
        self.ids.append(token)
        text = self._decode()
        self.incomplete = text.endswith("\ufffd")
        stable = text.rstrip("\ufffd") if self.incomplete else text
        if stable.startswith(self.stable):      # (decoding rewrote earlier text: wait for it to settle)
            self.stable = stable
        if entry is not None:
            self.pending.append((entry, len(self.stable)))
        index = find_stop(self.stable, self.stops) if self.stops else None
        if index is not None:
            self.stopped = True
            return self.finish(self.stable[:index])
        safe = len(self.stable) - (partial_stop_length(self.stable, self.stops) if self.stops else 0)
        return self._release(safe)

    def _release(self, upto: int) -> tuple[str, list[TokenLogprob]]:
        delta = self.stable[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        ready, keep = [], 1 if self.incomplete else 0
        while len(self.pending) > keep and self.pending[0][1] <= self.sent:
            entry, end = self.pending.pop(0)
            entry.text, self.token_end = self.stable[self.token_end:end], max(end, self.token_end)
            ready.append(entry)
        return delta, ready

    def finish(self, final: str | None = None) -> tuple[str, list[TokenLogprob]]:
        """The sequence ended: send the rest of `final` (default: everything decoded) and every
        token left; the last tokens' texts are cut to `final` so that they join to it."""
        final = self._decode() if final is None else final
        delta = final[self.sent:] if len(final) > self.sent else ""
        start, ready = min(self.token_end, len(final)), []
        for k, (entry, end) in enumerate(self.pending):
            end = len(final) if k == len(self.pending) - 1 else max(min(end, len(final)), start)
            entry.text, start = final[start:end], end
            ready.append(entry)
        self.pending, self.sent, self.stable, self.token_end = [], len(final), final, len(final)
        return delta, ready


class _Row:
    """One sequence of a request in the running batch."""

    def __init__(self, request: Request, index: int, vocab_size: int, tokenizer, device):
        config = request.config
        self.request, self.index, self.config = request, index, config
        self.eos = set(config.eos_token_ids)
        self.generated = 0
        self.last = 0                                   # the token the next step feeds
        self.history = list(request.prompt_ids)         # prompt + generated (no-repeat n-gram)
        self.text = _Text(tokenizer, config.stop)
        self.generator = None
        if not config.greedy:
            self.generator = torch.Generator(device=device)
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed + index)
        self.seen = None                                # (V,) bool: tokens so far (repetition penalty)
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(request.prompt_ids, device=device)] = True
        self.counts = None                              # (V,) generated-token counts (OpenAI's penalties)
        if config.presence_penalty or config.frequency_penalty:
            self.counts = torch.zeros(vocab_size, device=device)

    def event(self, text: str, tokens: list[TokenLogprob], finish: str | None, error: str | None = None) -> Event:
        return Event(self.index, text, tokens, finish, len(self.request.prompt_ids), self.generated, error)


class Engine:
    """Continuous batching over one decoder-only model (see the module docstring).

    max_batch: rows decoded together at most (a request with n sequences takes n rows).
    max_queue: requests waiting for a row at most; `submit` raises QueueFull beyond it.
    max_prefill_tokens: padded prompt tokens prefilled together in one turn (at least one request).
    compiled: decode with compiled steps (None: when the model was given to `compile_decoding`).
    """

    def __init__(self, model, tokenizer, max_batch: int = 8, max_queue: int = 64, max_prefill_tokens: int = 4096,
                 compiled: bool | None = None):
        if model.config.architecture != "decoder":
            raise ValueError(f"the batching engine serves decoder-only models, not {model.config.architecture!r} "
                             "ones (use generate for those)")
        for name, value in (("max_batch", max_batch), ("max_prefill_tokens", max_prefill_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue, self.max_prefill_tokens = max_batch, max_queue, max_prefill_tokens
        self.vocab_size = model.config.vocab_size
        self.window = None if model.config.position == "relative" else model.config.max_position_embeddings
        self.device = model.device
        if compiled is None:
            compiled = getattr(model, "compiled_decoding", None) is not None
        if compiled and getattr(model, "compiled_decoding", None) is None:
            compile_decoding(model)
        self.compiled = bool(compiled)
        self.row_buckets = sorted({min(1 << k, max_batch) for k in range(max_batch.bit_length() + 1)})
        self._waiting: collections.deque[Request] = collections.deque()
        self._jobs: collections.deque[tuple[Callable, Future]] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._rows: list[_Row | None] = []              # one per cache row; None: a hole
        self._cache = None
        self._logits: torch.Tensor | None = None        # (B, V): each row's next-token logits
        self._idle_holes = 0
        self._compiled_step = None
        self.min_slots = 0                               # compiled: the smallest cache size warmed up
        self.eager_rows: set[int] = set()                # compiled: batch sizes that decode eagerly (faster)
        self.step_choice: dict[int, tuple[str, float, float]] = {}   # warm_up: rows -> (choice, compiled ms, eager ms)
        self.steps = 0                                   # decode steps run (for tests and metrics)
        self._thread = threading.Thread(target=self._loop, name="gencycle-engine", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the caller's side
    @property
    def running(self) -> int:
        """Rows decoding now."""
        return sum(row is not None for row in self._rows)

    @property
    def waiting(self) -> int:
        """Requests waiting for rows."""
        return len(self._waiting)

    def check(self, prompt_ids, config: GenerationConfig | None = None, n: int = 1,
              logprobs: int | None = None) -> tuple[list[int], GenerationConfig]:
        """What `submit` checks, without submitting: the prompt as a list of ids and the config to
        run (EOS and padding from the model, max_new_tokens capped to the context window)."""
        ids = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
        if ids and isinstance(ids[0], list):
            raise ValueError("submit takes one prompt (a list of token ids), not a batch: submit each one")
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab_size for t in ids):
            raise ValueError(f"prompt token ids must be integers in [0, {self.vocab_size})")
        config = resolve_config(self.model, config)
        if config.num_beams > 1:
            raise ValueError("beam search does not run in the batching engine: call generate (engine.call "
                             "runs it between two steps)")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_batch:
            raise ValueError(f"n must be an integer in [1, {self.max_batch}] (the engine's rows), got {n!r}")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {logprobs!r}")
        if self.window is not None:
            if len(ids) >= self.window:
                raise ValueError(f"prompt of {len(ids)} tokens does not fit the model's context window of "
                                 f"{self.window} tokens (it needs room for at least one new token)")
            if len(ids) + config.max_new_tokens > self.window:
                config = config.replace(max_new_tokens=self.window - len(ids))
        return ids, config

    def submit(self, prompt_ids, config: GenerationConfig | None = None, *, n: int = 1,
               logprobs: int | None = None, on_event: Callable[[Event], None]) -> Request:
        """Queue one prompt (token ids) for n sequences; `on_event` gets each Event, on the scheduler
        thread. logprobs: None (none), or how many alternatives per token (0-20) besides the chosen one.
        Raises ValueError for bad input, QueueFull when max_queue requests wait already."""
        ids, config = self.check(prompt_ids, config, n, logprobs)
        request = Request(ids, config, n, logprobs, on_event)
        with self._wake:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if self._full():
                raise QueueFull(f"{len(self._waiting)} requests are waiting already (max_queue={self.max_queue})")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def _full(self) -> bool:
        """More than max_queue requests would wait beyond the rows free now."""
        free = max(0, self.max_batch - self.running)
        return len(self._waiting) + len(self._jobs) >= self.max_queue + free

    def stream(self, prompt_ids, config: GenerationConfig | None = None, *, n: int = 1,
               logprobs: int | None = None) -> Iterator[Event]:
        """Submit and yield the Events as they come; closing the iterator early cancels the request."""
        events: queue.Queue = queue.Queue()
        request = self.submit(prompt_ids, config, n=n, logprobs=logprobs, on_event=events.put)
        return self._drain(request, events)

    @staticmethod
    def _drain(request: Request, events: queue.Queue) -> Iterator[Event]:
        finished = 0
        try:
            while finished < request.n:
                event = events.get()
                finished += event.finish_reason is not None
                yield event
        finally:
            if finished < request.n:
                request.cancel()

    def complete(self, prompt_ids, config: GenerationConfig | None = None, *, n: int = 1,
                 logprobs: int | None = None) -> list[Completion]:
        """Submit and wait: the n finished sequences."""
        parts: list[list] = [[[], [], None, 0, 0] for _ in range(n)]
        for event in self.stream(prompt_ids, config, n=n, logprobs=logprobs):
            if event.finish_reason == "error":
                raise RuntimeError(f"generation failed: {event.error}")
            part = parts[event.index]
            part[0].append(event.text)
            part[1].extend(event.tokens)
            part[2:] = [event.finish_reason, event.prompt_tokens, event.completion_tokens]
        return [Completion("".join(p[0]), p[1], p[2], p[3], p[4]) for p in parts]

    def call(self, function: Callable[[], object]) -> Future:
        """Run `function()` on the scheduler thread between two steps (beam search, anything else that
        uses the model); returns a concurrent.futures.Future of its result."""
        future: Future = Future()
        with self._wake:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if self._full():
                raise QueueFull(f"{len(self._waiting) + len(self._jobs)} requests are waiting already")
            self._jobs.append((function, future))
            self._wake.notify()
        return future

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the scheduler: running and waiting requests end with finish_reason "cancelled"."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- the scheduler thread
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                admitted, jobs = self._take(block=self.running == 0)
                if admitted is None:
                    break
                for function, future in jobs:
                    self._run_job(function, future)
                self._cancel_rows()
                if admitted:
                    self._guarded(self._admit, admitted)
                if self.running == 0:
                    self._reset()
                    continue
                self._guarded(self._pick)
                if self.running == 0:
                    self._reset()
                    continue
                self._drop_idle_holes()
                self._guarded(self._step)
        self._shutdown()

    def _take(self, block: bool) -> tuple[list[Request] | None, list]:
        """Requests to admit this turn (within the free rows and the prefill budget) and jobs to run;
        (None, []) once closed."""
        with self._wake:
            while block and not (self._waiting or self._jobs or self._closed):
                self._wake.wait()
            if self._closed:
                return None, []
            jobs = list(self._jobs)
            self._jobs.clear()
            free = self.max_batch - self.running
            taken, longest = [], 0
            while self._waiting:
                request = self._waiting[0]
                if request.cancelled:
                    self._waiting.popleft()
                    self._notify_all(request, "cancelled")
                    continue
                width = max(longest, len(request.prompt_ids))
                if request.n > free or (taken and width * (len(taken) + 1) > self.max_prefill_tokens):
                    break
                taken.append(self._waiting.popleft())
                free, longest = free - request.n, width
            return taken, jobs

    def _run_job(self, function, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function())
        except BaseException as error:  # handed to whoever waits on the future
            future.set_exception(error)

    def _guarded(self, method, *args) -> None:
        """Run a part of the turn; if it fails, the rows it touched end with an error (the engine goes on)."""
        try:
            method(*args)
        except Exception as error:  # a bug or an out-of-memory: tell every client, start afresh
            log.exception("engine step failed")
            message = f"{type(error).__name__}: {error}"
            for row in self._rows:
                if row is not None:
                    self._send(row.request, row.event("", [], "error", message))
            for request in (args[0] if args else []):
                if not any(row is not None and row.request is request for row in self._rows):
                    self._notify_all(request, "error", message)
            self._rows, self._cache, self._logits = [], None, None

    @staticmethod
    def _send(request: Request, event: Event) -> None:
        try:
            request.on_event(event)
        except Exception:  # a callback must not stop the engine
            log.exception("an engine event callback failed")

    def _notify_all(self, request: Request, finish: str, error: str | None = None) -> None:
        for index in range(request.n):
            self._send(request, Event(index, "", [], finish, len(request.prompt_ids), 0, error))

    def _cancel_rows(self) -> None:
        for i, row in enumerate(self._rows):
            if row is not None and row.request.cancelled:
                self._send(row.request, row.event("", [], "cancelled"))
                self._free(i)

    def _free(self, i: int) -> None:
        """Row i becomes a hole: no valid slots (so `compact` is not held back by it)."""
        self._rows[i] = None
        if self._cache is not None:
            self._cache.starts[i] = self._cache.length

    def _reset(self) -> None:
        self._rows, self._cache, self._logits, self._idle_holes = [], None, None, 0

    def _shutdown(self) -> None:
        for row in self._rows:
            if row is not None:
                self._send(row.request, row.event("", [], "cancelled", "the engine was closed"))
        with self._wake:
            waiting, jobs = list(self._waiting), list(self._jobs)
            self._waiting.clear()
            self._jobs.clear()
        for request in waiting:
            self._notify_all(request, "cancelled", "the engine was closed")
        for _, future in jobs:
            future.cancel()
        self._reset()

    # ---- 1. admit
    def _admit(self, requests: list[Request]) -> None:
        """Prefill the new prompts together and join their rows to the batch."""
        started = []
        for request in requests:
            if request.config.max_new_tokens == 0:
                self._notify_all(request, "length")
            else:
                started.append(request)
        if not started:
            return
        T = max(len(r.prompt_ids) for r in started)
        ids = torch.zeros(len(started), T, dtype=torch.long)
        mask = torch.zeros(len(started), T, dtype=torch.long)
        for i, request in enumerate(started):                 # left-padded
            ids[i, T - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[i, T - len(request.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        joining = self.model.new_cache(len(started), T)
        out = self.model(ids, None if bool(mask.all()) else mask, cache=joining, logits_to_keep=1)
        logits = out.logits[:, -1].float()                    # (P, V)
        repeat = torch.tensor([r.n for r in started], device=self.device)
        if bool((repeat > 1).any()):                          # n sequences: one prefill, n rows
            index = torch.arange(len(started), device=self.device).repeat_interleave(repeat)
            joining.select(index)
            logits = logits[index]
        rows = [_Row(r, k, self.vocab_size, self.tokenizer, self.device) for r in started for k in range(r.n)]
        self._join(joining, rows, logits)

    def _join(self, joining, rows: list[_Row], logits: torch.Tensor) -> None:
        """Put the prefilled rows into holes of the batch, first making a bigger batch if there are too few."""
        if self.compiled:
            self._compiled_step = current_step(self.model)     # rebuilt if the model changed since
        holes = [i for i, row in enumerate(self._rows) if row is None]
        if self._cache is None or len(rows) > len(holes):
            live = self.running + len(rows)
            batch = next(b for b in self.row_buckets if b >= live) if self.compiled else live
            headroom = min(SLOT_CHUNK, max(row.config.max_new_tokens for row in rows))
            live_rows = [i for i, row in enumerate(self._rows) if row is not None]
            longest = int(self._cache.lengths[live_rows].max()) if live_rows else 0
            self._rebuild(batch, self._slots_for(max(longest, joining.length + headroom) + 1))
            holes = [i for i, row in enumerate(self._rows) if row is None]
        self._room(joining.length)
        places = holes[:len(rows)]
        self._cache.insert(torch.tensor(places, device=self.device), joining)
        self._logits[places] = logits
        for place, row in zip(places, rows):
            self._rows[place] = row
        self._idle_holes = 0

    def _new_cache(self, batch: int, slots: int):
        if self.compiled:
            return StaticKVCache.for_model(self.model, batch, slots)
        return self.model.new_cache(batch, slots)

    def _slots_for(self, length: int) -> int:
        """Slots of a batch cache whose rows need `length`: a power of two when compiled (few graphs)."""
        slots = max(cache_slots(length), self.min_slots) if self.compiled else length + SLOT_CHUNK
        return slots if self.window is None else max(min(slots, self.window), length)

    def _rebuild(self, batch: int, slots: int) -> None:
        """A new batch cache of `batch` rows and `slots` slots: the running rows first, holes after."""
        live = [i for i, row in enumerate(self._rows) if row is not None]
        cache = self._new_cache(batch, slots)
        logits = torch.zeros(batch, self.vocab_size, device=self.device)
        if live:
            index = torch.tensor(live, device=self.device)
            old = self._cache
            old.select(index)
            old.compact()
            cache.insert(torch.arange(len(live), device=self.device), old)
            logits[:len(live)] = self._logits[index]
        self._rows = [self._rows[i] for i in live] + [None] * (batch - len(live))
        self._cache, self._logits = cache, logits

    def _room(self, joining_length: int = 0) -> None:
        """Make the batch's cache hold its rows, `joining_length` slots joining, and the next step."""
        cache = self._cache
        needed = max(cache.length, joining_length) + 1
        if needed <= cache.max_length and (self.window is None or cache.length + 1 <= self.window):
            return
        for i, row in enumerate(self._rows):
            if row is None:
                cache.starts[i] = cache.length
        cache.compact()
        needed = max(cache.length, joining_length) + 1
        if needed > cache.max_length:                         # grow: a bigger cache, the same rows
            self._rebuild(cache.batch_size, self._slots_for(max(needed, 2 * cache.max_length)))

    def _drop_idle_holes(self) -> None:
        """Holes left unfilled for IDLE_HOLE_STEPS steps, nothing waiting: a smaller batch."""
        live = self.running
        batch = next(b for b in self.row_buckets if b >= live) if self.compiled else live
        if batch == len(self._rows) or self._waiting:
            self._idle_holes = 0
            return
        self._idle_holes += 1
        if self._idle_holes >= IDLE_HOLE_STEPS:
            self._rebuild(batch, self._cache.max_length)
            self._idle_holes = 0

    # ---- 2-3. pick and report
    def _pick(self) -> None:
        active = [i for i, row in enumerate(self._rows) if row is not None]
        rows = [self._rows[i] for i in active]
        logits = self._logits[torch.tensor(active, device=self.device)] if len(active) < len(self._rows) \
            else self._logits
        tokens = self._choose(logits, rows)                   # (A,) list of ints
        wanted = [k for k, row in enumerate(rows) if row.request.logprobs is not None]
        entries: dict[int, TokenLogprob] = {}
        if wanted:
            entries = self._logprobs(logits, rows, tokens, wanted)
        for k, (i, row) in enumerate(zip(active, rows)):
            token = tokens[k]
            row.generated += 1
            if token in row.eos:
                delta, released = row.text.finish()
                finish = "stop"
            else:
                delta, released = row.text.add(token, entries.get(k))
                finish = "stop" if row.text.stopped else None
                row.last = token
                row.history.append(token)
                if row.seen is not None:
                    row.seen[token] = True
                if row.counts is not None:
                    row.counts[token] += 1
                if finish is None and (row.generated >= row.config.max_new_tokens):
                    finish = "length"
                    more, extra = row.text.finish()
                    delta, released = delta + more, released + extra
            self._send(row.request, row.event(delta, released, finish))
            if finish is not None:
                self._free(i)

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Next token of each row: its processors with its own values, then arg-max or a draw."""
        scores = logits
        V = scores.shape[1]
        penalized = [k for k, r in enumerate(rows) if r.seen is not None]
        if penalized:                                          # repetition penalty (CTRL), per row
            index = torch.tensor(penalized, device=self.device)
            s = scores[index]
            p = torch.tensor([rows[k].config.repetition_penalty for k in penalized], device=self.device)[:, None]
            seen = torch.stack([rows[k].seen for k in penalized])
            scores = scores.index_copy(0, index, torch.where(seen, torch.where(s < 0, s * p, s / p), s))
        for k, row in enumerate(rows):
            n = row.config.no_repeat_ngram_size
            if n:
                ids = torch.tensor(row.history, device=self.device)[None]
                scores = scores.index_copy(0, torch.tensor([k], device=self.device),
                                           no_repeat_ngram(scores[k:k + 1], ids, n))
            if row.generated < row.config.min_new_tokens and row.eos:
                scores = scores.clone() if scores is logits else scores
                scores[k, list(row.eos)] = -torch.inf
        counted = [k for k, r in enumerate(rows) if r.counts is not None]
        if counted:                                            # OpenAI's presence / frequency penalties
            index = torch.tensor(counted, device=self.device)
            presence = torch.tensor([rows[k].config.presence_penalty for k in counted], device=self.device)[:, None]
            frequency = torch.tensor([rows[k].config.frequency_penalty for k in counted], device=self.device)[:, None]
            counts = torch.stack([rows[k].counts for k in counted])
            scores = scores.index_copy(0, index, presence_frequency_penalty(scores[index], counts, presence, frequency))

        chosen = [0] * len(rows)
        greedy = [k for k, r in enumerate(rows) if r.config.greedy]
        if greedy:
            picks = (scores if len(greedy) == len(rows) else scores[torch.tensor(greedy, device=self.device)])
            for k, token in zip(greedy, picks.argmax(dim=-1).tolist()):
                chosen[k] = token
        sampled = [k for k, r in enumerate(rows) if not r.config.greedy]
        if sampled:
            s = scores[torch.tensor(sampled, device=self.device)]
            configs = [rows[k].config for k in sampled]
            s = _warp(s, configs, V, self.device)
            probs = s.softmax(dim=-1)
            for j, k in enumerate(sampled):
                chosen[k] = int(torch.multinomial(probs[j:j + 1], 1, generator=rows[k].generator))
        return chosen

    def _logprobs(self, logits, rows, tokens, wanted) -> dict[int, TokenLogprob]:
        index = torch.tensor(wanted, device=self.device)
        lp = logits[index].log_softmax(dim=-1)                 # the model's own distribution
        chosen = lp.gather(1, torch.tensor([tokens[k] for k in wanted], device=self.device)[:, None])[:, 0].tolist()
        most = max(rows[k].request.logprobs for k in wanted)
        top_values, top_ids = lp.topk(most, dim=-1) if most else (None, None)
        out = {}
        for j, k in enumerate(wanted):
            top = []
            if most:
                m = rows[k].request.logprobs
                top = [(self.tokenizer.decode([t]), t, v)
                       for t, v in zip(top_ids[j, :m].tolist(), top_values[j, :m].tolist())]
            out[k] = TokenLogprob("", tokens[k], chosen[j], top)
        return out

    # ---- 4. step
    def _step(self) -> None:
        self._room()
        cache = self._cache
        tokens = torch.tensor([[row.last if row is not None else 0] for row in self._rows], device=self.device)
        if self.compiled and cache.batch_size not in self.eager_rows:
            self._logits = self._run_compiled(tokens, cache)
        else:                                                 # (a StaticKVCache fills like a KVCache here)
            out = self.model(tokens, cache.attention_mask(new_tokens=1), cache=cache, logits_to_keep=1)
            self._logits = out.logits[:, -1].float()
        self.steps += 1

    def _run_compiled(self, tokens: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One compiled step over every row and slot: each row attends to its valid slots and the new one."""
        slots = torch.arange(cache.max_length, device=self.device)
        valid = (slots[None, :] >= cache.starts[:, None]) & (slots[None, :] <= cache.length)   # (B, S)
        dtype = self.model.dtype
        bias = torch.zeros(valid.shape, dtype=dtype, device=self.device).masked_fill_(~valid, torch.finfo(dtype).min)
        positions = cache.lengths[:, None]                    # (B, 1): each row's next position
        cache.position = torch.tensor([cache.length], device=self.device)
        try:
            logits = self._compiled_step(tokens, positions, bias[:, None, None, :], cache)
        finally:
            cache.position = None
        cache.advance(1)
        return logits

    def warm_up(self, slots: tuple[int, ...] = (512,), timeout: float | None = None,
                keep_faster: bool = True, repeats: int = 3) -> None:
        """Build the compiled step's graphs for every row count of the batch at these cache sizes now
        (on the scheduler thread), so that no request waits for a compilation. Eager: nothing to do.

        keep_faster: also time `repeats` compiled and eager steps of each row count at the first
        cache size, every slot filled (the compiled step attends to all of them anyway; an eager
        step only to the filled ones, so this is the eager step's worst case), and decode that row
        count eagerly when its eager step was faster (`eager_rows`; `step_choice` has the timings).
        On this project's 2-core Xeon the ahead-of-time SmolLM2 int4 step (bf16 around it) over 512
        filled slots measured 17.5 vs 26.9 ms eager at 1 row and 37.3 vs 39.4 ms at 8 rows (an earlier
        session, before gencycle's int4 and attention kernels ran in compiled steps, measured it 2.5x
        and 17x slower than eager)."""
        if not self.compiled:
            return

        def build():
            self._compiled_step = current_step(self.model)
            self.min_slots = cache_slots(min(slots))     # smaller batches use it too: no graph to build later
            for size in slots:
                for batch in self.row_buckets:
                    cache = StaticKVCache.for_model(self.model, batch, cache_slots(size))
                    self._run_compiled(torch.zeros(batch, 1, dtype=torch.long, device=self.device), cache)
            self.eager_rows.clear()
            self.step_choice.clear()
            if keep_faster:
                for batch in self.row_buckets:
                    self._choose_step(batch, self.min_slots, repeats)
        self.call(build).result(timeout)

    def _choose_step(self, batch: int, slots: int, repeats: int) -> None:
        """Time compiled and eager steps of `batch` rows over `slots` filled slots; keep the faster."""
        tokens = torch.zeros(batch, 1, dtype=torch.long, device=self.device)

        def best(run) -> float:
            times = []
            for _ in range(max(1, repeats)):
                cache = StaticKVCache.for_model(self.model, batch, slots)
                cache.length = slots - 1                      # every slot filled after this step
                started = time.perf_counter()
                run(cache)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - started)
            return min(times) * 1e3

        compiled = best(lambda cache: self._run_compiled(tokens, cache))
        eager = best(lambda cache: self.model(tokens, cache.attention_mask(new_tokens=1), cache=cache,
                                              logits_to_keep=1))
        choice = "eager" if eager < compiled else "compiled"
        if choice == "eager":
            self.eager_rows.add(batch)
        self.step_choice[batch] = (choice, compiled, eager)
        log.info("decoding %d row(s) over %d slots: compiled step %.1f ms, eager %.1f ms: %s", batch, slots,
                 compiled, eager, choice)


def _warp(scores: torch.Tensor, configs: list[GenerationConfig], V: int, device) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p with one value per row (processors.py's, row-wise)."""
    t = torch.tensor([c.temperature for c in configs], device=device)[:, None]
    scores = scores / t
    ks = [c.top_k if 0 < c.top_k < V else 0 for c in configs]
    if any(ks):                                                # keep the k best (ties with the k-th too)
        most = max(ks)
        kth = scores.topk(most, dim=1).values                  # (N, most)
        at = torch.tensor([max(k, 1) - 1 for k in ks], device=device)[:, None]
        floor = kth.gather(1, at).masked_fill(torch.tensor(ks, device=device)[:, None] == 0, -torch.inf)
        scores = scores.masked_fill(scores < floor, -torch.inf)
    ps = torch.tensor([c.top_p for c in configs], device=device)[:, None]
    if bool((ps < 1).any()):                                   # nucleus, as processors.top_p
        ordered, order = scores.sort(dim=1, descending=False)
        drop = ordered.softmax(dim=1).cumsum(dim=1) <= 1 - ps
        drop[:, -1] = False
        drop &= ps < 1
        scores = scores.masked_fill(drop.scatter(1, order, drop), -torch.inf)
    mins = [c.min_p for c in configs]
    if any(mins):
        scores = min_p_filter(scores, torch.tensor(mins, device=device)[:, None])
    return scores
