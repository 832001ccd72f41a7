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


def check_model(name_or_path, tokenizer: bool = True) -> None:
    """Refuse a model that cannot load before any work, since the server loads it only after it has
    started: a missing path, a file that is not GGUF (magic and version), a folder without a readable
    config.json, a weights file whose header is damaged, a tokenizer or generation_config.json that
    does not read. Cheap: no weights are read (so a GGUF truncated after its header is found by the
    load, after the server started)."""
    from ..assets import resolve
    from ..checkpoints import WEIGHT_FILES, load_config
    from ..errors import UserError
    path = resolve(name_or_path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{str(path)!r} is a file, not a model: give a model folder (with config.json) "
                            "or a .gguf file")
        with open(path, "rb") as file:  # the magic and the version (a full header read takes seconds)
            head = file.read(8)
        if head[:4] != b"GGUF" or len(head) < 8 or int.from_bytes(head[4:8], "little") not in (2, 3):
            raise UserError(f"{str(path)!r} is not a GGUF file of version 2 or 3 (it starts with {head!r})")
        return
    load_config(path)  # config.json is there, is JSON, and names a supported family with sane sizes
    weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise UserError(f"no weights file in {str(path)!r}: looked for {', '.join(WEIGHT_FILES)}")
    if weights.name == "model.safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(weights), "pt"):  # reads the header only
                pass
        except Exception as error:  # noqa: BLE001 - safetensors raises its own kinds for a damaged file
            raise UserError(f"corrupt or truncated safetensors file {str(weights)!r}: {error}") from None
    if tokenizer:
        from ..generation import GenerationConfig
        from ..tokenizer import load_tokenizer
        load_tokenizer(path)
        if (path / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(path)


def run(args) -> int:
    from ..serve import serve
    from ..serve.config import ServeConfig
    config = config_from_args(ServeConfig(), args)  # ServeConfig checks the values (port, limits, device)
    check_model(DEFAULT_MODEL if args.model is None else args.model)  # before the server starts
    if config.embedding_model not in (None, "none", "all-minilm-l6-v2"):
        check_model(config.embedding_model, tokenizer=False)
    config = _with_inference_defaults(config)
    return serve(args.model, config)


def _with_inference_defaults(config):
    """The device, precision and decoding of generation/defaults.py for what the flags leave open (a
    server answers greedy requests too: fp32 unless --dtype), said in one line on stderr."""
    import sys

    from ..generation.defaults import inference_defaults
    from ..workflows.config import override
    choice = inference_defaults(device=config.device, dtype=config.dtype, quantize=config.quantize,
                                compile=config.compile, serving=True)
    print(choice.description, file=sys.stderr, flush=True)
    return override(config, device=choice.device, dtype=choice.dtype, compile=choice.compile)
