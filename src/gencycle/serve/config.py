"""`ServeConfig`: how `gencycle serve` loads its model and takes requests (the CLI's flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import OptionError

API_KEY_VARIABLE = "GENCYCLE_API_KEY"
Dtype = Literal["fp32", "bf16", "fp16"]
Quantize = Literal["int8", "int4"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass
class ServeConfig:
    """The HTTP server: address, limits, the model's precision, the embedding model."""

    host: str = "127.0.0.1"
    """address to listen on (0.0.0.0 listens on every interface: set --api-key then)"""
    port: int = 8000
    """TCP port, 0-65535 (0: any free port; the log line 'Uvicorn running on ...' names the one it got)"""
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
    Retry-After (0: none wait, a request that finds the batch full gets the 503 at once)"""
    max_body_bytes: int = 1 << 20
    """largest request body accepted (larger: 413)"""
    dtype: Dtype | None = None
    """weights dtype (default fp32)"""
    device: str | None = None
    """cpu, cuda, cuda:1, ... (default: cuda when available)"""
    quantize: Quantize | None = None
    """weight-only quantization of the Linear layers for inference"""
    compile: bool | None = None
    """decode with compiled steps, warmed up before /health reports ready (default: chosen by
    generation/defaults.py: on with CUDA and Triton, off on the CPU, where the warm-up would build a step
    library per batch size)"""
    embedding_model: str | None = "all-minilm-l6-v2"
    """encoder for /v1/embeddings (mean pooling): a packaged name or a folder; 'none' serves no
    embeddings (default: the packaged all-MiniLM-L6-v2 when installed)"""
    log_level: LogLevel = "info"
    """uvicorn's log level"""

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host.strip():
            raise OptionError("host", "must be an address such as 127.0.0.1", self.host)
        for name, low, high in (("port", 0, 65535), ("max_concurrency", 1, None), ("max_queue", 0, None),
                                ("max_body_bytes", 1, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low \
                    or (high is not None and value > high):
                bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise OptionError(name, f"must be an integer {bounds}", value)
        for name, kind in (("dtype", Dtype), ("quantize", Quantize), ("log_level", LogLevel)):
            value = getattr(self, name)
            if value is not None and value not in get_args(kind):
                raise OptionError(name, f"must be one of {', '.join(get_args(kind))}", value)
        if self.device is not None:
            from ..checkpoints.devices import resolve_device
            resolve_device(self.device)  # a device this machine lacks fails here, before the model loads
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise OptionError("served_model_name", "is empty: give a name, or leave it out for the model's own")
        if self.api_key is not None and not self.api_key.strip():
            raise OptionError("api_key", "is empty: give a key, or leave it out for no key")
