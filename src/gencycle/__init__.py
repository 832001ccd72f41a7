"""gencycle: the generative-AI project lifecycle with transformer language models."""

from .checkpoints import load_model, save_pretrained
from .generation import LLM, GenerationConfig, TextStreamer, compile_decoding
from .model import KVCache, ModelConfig, ModelOutput, Transformer, preset

__version__ = "0.1.0"


def load_tokenizer(path):
    """Load the tokenizer of a model folder, a .gguf file or a packaged model name."""
    from .tokenizer import load_tokenizer as _load
    return _load(path)


__all__ = ["GenerationConfig", "KVCache", "LLM", "ModelConfig", "ModelOutput", "Transformer", "load_model", "load_tokenizer",
           "TextStreamer", "compile_decoding", "preset", "save_pretrained"]
