"""`ServeConfig`: how `gencycle serve` loads its model and takes requests (the CLI's flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

API_KEY_VARIABLE = "GENCYCLE_API_KEY"


def _compiler_present() -> bool:
    from ..generation.compiled import has_cpp_compiler
    return has_cpp_compiler()


@dataclass
class ServeConfig:
    """The HTTP server: address, limits, the model's precision, the embedding model."""

    host: str = "127.0.0.1"
    """address to listen on (0.0.0.0 listens on every interface: set --api-key then)"""
    port: int = 8000
    """TCP port"""
    api_key: str | None = None
    """clients must send 'Authorization: Bearer KEY' (or X-Api-Key); default: the GENCYCLE_API_KEY
    environment variable, unset = no key. /health and the playground page stay open"""
    served_model_name: str | None = None
    """the model's name in /v1/models and the requests' `model` field (default: the model's file or
    folder name)"""
    max_concurrency: int = 8
    """sequences decoded together in the running batch (a request with n=2 takes 2)"""
    max_queue: int = 64
    """requests waiting for a place in the batch at most; beyond it the server answers 503 with
    Retry-After"""
    max_body_bytes: int = 1 << 20
    """largest request body accepted (larger: 413)"""
    dtype: Literal["fp32", "bf16", "fp16"] | None = None
    """weights dtype (default fp32)"""
    device: str | None = None
    """cpu, cuda, cuda:1, ... (default: cuda when available)"""
    quantize: Literal["int8", "int4"] | None = None
    """weight-only quantization of the Linear layers for inference"""
    compile: bool = field(default_factory=_compiler_present)
    """decode with compiled steps (torch.compile), warmed up before /health reports ready (needs a C++
    compiler: off by default without one)"""
    embedding_model: str | None = "all-minilm-l6-v2"
    """encoder for /v1/embeddings (mean pooling): a packaged name or a folder; 'none' serves no
    embeddings (default: the packaged all-MiniLM-L6-v2 when installed)"""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """uvicorn's log level"""
