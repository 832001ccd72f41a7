"""The OpenAI-compatible HTTP server over the continuous-batching engine (`gencycle serve`).

    from gencycle.serve import ServeConfig, create_app, serve
    serve("smollm2-135m-instruct", ServeConfig(port=8000, quantize="int4"))

See app.py for the endpoints, protocol.py for the request fields and errors, and
gencycle.generation.engine for the batching.
"""

from .app import create_app, serve
from .config import ServeConfig
from .runtime import Runtime

__all__ = ["Runtime", "ServeConfig", "create_app", "serve"]
