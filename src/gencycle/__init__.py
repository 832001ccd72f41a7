"""gencycle: the generative-AI project lifecycle with transformer language models.

The core as free functions over one `Transformer` (the model knows nothing of files or decoding):

    model = load_model("smollm2-135m-instruct")
    ids = generate(model, input_ids, attention_mask, max_new_tokens=20)
    save_pretrained(model, "out/model")
"""

from .checkpoints import load_model, save_pretrained
from .generation import LLM, GenerationConfig, TextStreamer, compile_decoding, generate, stream
from .model import KVCache, ModelConfig, ModelOutput, Transformer, preset

__version__ = "0.1.0"


def load_tokenizer(path):
    """Load the tokenizer of a model folder, a .gguf file or a packaged model name."""
    from .tokenizer import load_tokenizer as _load
    return _load(path)


__all__ = ["GenerationConfig", "KVCache", "LLM", "ModelConfig", "ModelOutput", "TextStreamer", "Transformer",
           "compile_decoding", "generate", "load_model", "load_tokenizer", "preset", "save_pretrained", "stream"]
