"""Text generation: configs, logits processors, greedy / sampling / beam search, streaming, `LLM`."""

from .compiled import compile_decoding
from .config import GenerationConfig
from .decoding import generate, resolve_config
from .llm import LLM
from .streaming import TextStreamer, stream

__all__ = ["GenerationConfig", "LLM", "TextStreamer", "compile_decoding", "generate", "resolve_config", "stream"]
