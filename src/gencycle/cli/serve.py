"""`gencycle serve [MODEL]`: the OpenAI-compatible HTTP server (with the playground page at /).

Every option is generated from `gencycle.serve.ServeConfig` by `cli.options`, so the command and
the Python API (`gencycle.serve.serve(model, config)`) cannot drift apart.
"""

from __future__ import annotations

import argparse

from ..assets import DEFAULT_MODEL
from .options import add_config_arguments, config_from_args

DESCRIPTION = f"""\
Serve MODEL (default: the packaged {DEFAULT_MODEL}) over HTTP with an OpenAI-compatible API:
/v1/chat/completions, /v1/completions (streaming with SSE), /v1/embeddings, /v1/models, /tokenize,
/detokenize, /metrics, /health, and the playground page at /. Requests are decoded together
(continuous batching, --max-concurrency sequences at a time). Example:

  gencycle serve --quantize int4 --port 8000
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "{DEFAULT_MODEL}", "messages": [{{"role": "user", "content": "Hi!"}}]}}'
"""


def register(subparsers) -> None:
    from ..serve.config import ServeConfig
    parser = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None,
                        help=f"model folder, .gguf file or packaged name (default {DEFAULT_MODEL})")
    add_config_arguments(parser, ServeConfig())
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..assets import resolve
    from ..serve import serve
    from ..serve.config import ServeConfig
    config = config_from_args(ServeConfig(), args)
    for name in ("max_concurrency", "max_body_bytes"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {config.max_queue}")
    if not 0 <= config.port < 65536:
        raise ValueError(f"--port must be in [0, 65535], got {config.port}")
    resolve(DEFAULT_MODEL if args.model is None else args.model)  # a missing model fails before the server starts
    if config.embedding_model not in (None, "none", "all-minilm-l6-v2"):
        resolve(config.embedding_model)
    return serve(args.model, config)
