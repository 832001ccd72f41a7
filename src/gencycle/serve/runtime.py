"""What the server serves: the model and tokenizer (an `LLM`), the batching engine over it, and the
embedding encoder; loaded in a background thread so that `/health` can answer 503 meanwhile.

Other parts of the app (the playground's router) reach it as `request.app.state.runtime`:
`runtime.llm` (model, tokenizer, format_chat), `runtime.name`, `runtime.window`, and
`await runtime.run_on_model(function)`, which runs `function()` on the engine's scheduler thread
between two decoding steps (the thread that owns the model), returning its result.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..generation.engine import Engine
from .config import ServeConfig

log = logging.getLogger("gencycle.serve")


def model_name(model: str | Path | None) -> str:
    """The name a model is served under by default: a packaged name as is, else the file or folder name."""
    from ..assets import DEFAULT_MODEL, PACKAGED
    if model is None:
        return DEFAULT_MODEL
    text = str(model)
    return text if text.lower() in PACKAGED else (Path(text).name or text)


class Runtime:
    """Loads `model` with `config` (call `start()`); `ready` once loaded, `error` if loading failed."""

    def __init__(self, model: str | Path | None, config: ServeConfig, on_failure=None):
        self.model, self.config, self.on_failure = model, config, on_failure
        self.name = config.served_model_name or model_name(model)
        self.llm = self.engine = self.encoder = None
        self.encoder_name: str | None = None
        self.window: int | None = None
        self.error: str | None = None
        self.created = int(time.time())
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.encoder_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load_guarded, name="gencycle-load", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loaded (True) or failed / timed out (False)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def _load_guarded(self) -> None:
        try:
            self.load()
        except Exception as error:  # reported on /health and the console; the server then exits
            self.error = f"{type(error).__name__}: {error}"
            log.error("gencycle serve: could not load %s: %s", self.model, self.error)
            if self.on_failure is not None:
                self.on_failure()

    def load(self) -> None:
        from ..generation import LLM
        from ..generation.defaults import inference_defaults
        config = self.config
        if config.compile is None:  # `gencycle serve` fills it in; ServeConfig() from Python gets the same rule
            config = replace(config, compile=inference_defaults(device=config.device, quantize=config.quantize,
                                                                dtype=config.dtype, serving=True).compile)
        started = time.perf_counter()
        llm = LLM.load(self.model, dtype=config.dtype, device=config.device, quantize=config.quantize,
                       compile=config.compile)
        if llm.model.config.architecture != "decoder":
            raise ValueError(f"gencycle serve generates with decoder-only models; {self.model} is "
                             f"{llm.model.config.architecture!r}")
        self.llm = llm
        cfg = llm.model.config
        self.window = None if cfg.position == "relative" else cfg.max_position_embeddings
        self.engine = Engine(llm.model, llm.tokenizer, max_batch=config.max_concurrency, max_queue=config.max_queue,
                             compiled=config.compile)
        if config.compile:
            log.info("compiling the decoding steps (once per batch size; cached on disk) ...")
            self.engine.warm_up()
        self._load_encoder()
        log.info("gencycle serve: %s ready in %.1f s", self.name, time.perf_counter() - started)
        self._ready.set()

    def _load_encoder(self) -> None:
        from ..assets import DEFAULT_ENCODER, PACKAGED, package_dir
        choice = self.config.embedding_model
        if choice is None or str(choice).lower() == "none":
            return
        if str(choice).lower() == DEFAULT_ENCODER and package_dir(PACKAGED[DEFAULT_ENCODER][0]) is None:
            log.info("no embedding model: the packaged %s is not installed (/v1/embeddings answers 404)",
                     DEFAULT_ENCODER)
            return
        from ..integrate.embeddings import SentenceEncoder
        self.encoder = SentenceEncoder(choice, device=self.config.device)
        self.encoder_name = model_name(choice)

    async def run_on_model(self, function):
        """`function()` on the engine's scheduler thread, between two steps; its result."""
        return await asyncio.wrap_future(self.engine.call(function))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
