"""A small synthetic corpus for the pretraining tests, and `gencycle` as a script for torchrun.

    torchrun --nproc_per_node 2 tests/pretrain_worker.py pretrain --data ... --strategy ddp|fsdp

runs `gencycle.cli.main` on each process (the console script may not be on PATH in a test).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

NAMES = ["Anne", "Emma", "Jane", "Marianne", "Elinor", "Fanny", "Harriet", "Catherine"]
VERBS = ["walked to", "wrote to", "looked at", "spoke of", "thought of", "smiled at"]
OBJECTS = ["the garden", "the house", "her sister", "the village", "the letter", "Mr. Knightley"]
ENDINGS = ["slowly", "at last", "with pleasure", "in silence", "that morning"]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
            for _ in range(n)]


def write_corpus(folder: Path, documents: int = 120, sentences_per_document: int = 12, seed: int = 0) -> Path:
    """`documents` text files of simple sentences (a 7-word grammar: easy to learn, not trivial)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        text = " ".join(sentences(sentences_per_document, seed * 100_000 + i))
        (folder / f"doc{i:04d}.txt").write_text(text + "\n")
    return folder


def tiny_config(folder: Path, arch: str) -> Path:
    """A Hugging Face config.json of a tiny model of `arch` (vocab_size from the tokenizer)."""
    values = {
        "decoder": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                        tie_word_embeddings=True),
        "encoder": dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
                        architectures=["BertForMaskedLM"]),
        "encoder-decoder": dict(model_type="t5", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    }[arch]
    path = folder / f"{arch}.json"
    path.write_text(json.dumps(values))
    return path


if __name__ == "__main__":
    from gencycle.cli import main
    code = main(sys.argv[1:])
    from gencycle.training.distributed import teardown
    teardown()
    sys.exit(code)
