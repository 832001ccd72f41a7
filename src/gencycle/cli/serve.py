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


def check_model(name_or_path) -> None:
    """Refuse a model that cannot load (a missing path, a file that is not .gguf, a folder without
    config.json or weights) before any work: the server loads it only after it has started."""
    from ..assets import resolve
    from ..checkpoints import WEIGHT_FILES, load_config
    from ..errors import UserError
    path = resolve(name_or_path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{str(path)!r} is a file, not a model: give a model folder (with config.json) "
                            "or a .gguf file")
        return
    load_config(path)  # config.json is there, is JSON, and names a supported family
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"no weights file in {str(path)!r}: looked for {', '.join(WEIGHT_FILES)}")


def run(args) -> int:
    from ..serve import serve
    from ..serve.config import ServeConfig
    config = config_from_args(ServeConfig(), args)  # ServeConfig checks the values (port, limits, device)
    check_model(DEFAULT_MODEL if args.model is None else args.model)  # before the server starts
    if config.embedding_model not in (None, "none", "all-minilm-l6-v2"):
        check_model(config.embedding_model)
    return serve(args.model, config)
