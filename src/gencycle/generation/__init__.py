"""Text generation: configs, logits processors, greedy / sampling / beam search, streaming, `LLM`."""

from .config import GenerationConfig
from .decoding import generate, resolve_config
from .llm import LLM
from .streaming import TextStreamer, stream

__all__ = ["GenerationConfig", "LLM", "TextStreamer", "generate", "resolve_config", "stream"]
