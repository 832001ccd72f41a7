"""Sentence embeddings from an encoder: mean pooling over the attention mask.

This is what sentence-transformers does for all-MiniLM-L6-v2 (its modules.json:
Transformer -> Pooling(mean) -> Normalize), here on gencycle's own BERT:

    encoder = SentenceEncoder()                  # the packaged all-MiniLM-L6-v2
    vectors = encoder.encode(["Hi there", "Hello"])   # (2, 384), unit length
    builder = FewShotBuilder(..., selection="similar", embed_fn=encoder.encode)

Texts are batched by length (the longest first), so a batch pads little; the vectors come
back in the order of the texts. `name` says which encoder made a vector (a RAG index
stores it and refuses vectors of another encoder).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gencycle.assets import DEFAULT_ENCODER, PACKAGED, resolve


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors the mask keeps: (B, T, C), (B, T) -> (B, C)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)          # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)   # (B, C)


class SentenceEncoder:
    """Texts -> one vector each, from an encoder-only model folder (BERT family).

    path: a model folder or a packaged name (default: "all-minilm-l6-v2").
    normalize: L2-normalize each vector, so a dot product is the cosine similarity.
    max_length: tokens per text (longer texts are cut); default: the folder's
        sentence_bert_config.json `max_seq_length`, else the tokenizer's limit, else 512.
    device: default CUDA when there is a GPU, else the CPU.
    """

    def __init__(self, path: str | Path = DEFAULT_ENCODER, normalize: bool = True, batch_size: int = 32,
                 max_length: int | None = None, device: str | torch.device | None = None):
        from gencycle import load_model, load_tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        folder = resolve(path)
        device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(folder, device=device)
        if self.model.config.architecture != "encoder":
            raise ValueError(f"SentenceEncoder needs an encoder-only model (BERT family); {str(path)!r} is "
                             f"{self.model.config.architecture!r}")
        self.tokenizer = load_tokenizer(folder)
        self.normalize, self.batch_size = normalize, batch_size
        self.max_length = max_length or _max_seq_length(folder) or self.tokenizer.model_max_length or 512
        self.max_length = min(self.max_length, self.model.config.max_position_embeddings)
        self.name = embedder_name(path)

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    @property
    def special_tokens(self) -> int:
        """Tokens the tokenizer adds around each text ([CLS] ... [SEP]: 2)."""
        return len(self.tokenizer.encode("", add_special_tokens=True))

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str], progress: bool = False, desc: str = "embedding") -> torch.Tensor:
        """Embeddings of `texts`, (N, d) float32 on the CPU; a single string gives (1, d).
        progress: a progress bar over the texts."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.empty(0, self.dimension)
        lengths = [len(ids) for ids in self.tokenizer(texts, padding=False, return_tensors=None)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = torch.empty(len(texts), self.dimension)
        device = self.model.device
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length,
                                       padding_side="right")
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
                hidden = self.model(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).hidden_states
                vectors = mean_pool(hidden.float(), mask)                                         # (B, C)
                out[rows] = (F.normalize(vectors, dim=-1) if self.normalize else vectors).cpu()
                bar.update(len(rows))
        return out

    __call__ = encode


def embedder_name(path: str | Path) -> str:
    """The name an index records for an encoder: a packaged name as is, a folder as its absolute path."""
    return str(path).lower() if str(path).lower() in PACKAGED else str(resolve(path).resolve())


def _max_seq_length(folder: Path) -> int | None:
    config = folder / "sentence_bert_config.json"
    if folder.is_dir() and config.exists():
        return json.loads(config.read_text()).get("max_seq_length")
    return None
