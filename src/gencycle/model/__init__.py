"""The transformer: one config, one model class, its layers and its KV cache."""

from .cache import KVCache
from .config import PRESETS, ModelConfig, preset
from .transformer import ModelOutput, Transformer

__all__ = ["KVCache", "ModelConfig", "ModelOutput", "PRESETS", "Transformer", "preset"]
