"""Retrieve chunks for a query: dense (cosine), lexical (BM25), or both fused by reciprocal rank.

    retriever = Retriever("runs/dialogues.idx")          # loads the embedder the index was built with
    for hit in retriever.search("pizza toppings", k=5, mode="hybrid"):
        print(hit.rank, f"{hit.score:.3f}", hit.chunk.location)

Hybrid: each method ranks `candidates` chunks, and a chunk's fused score is the sum over the
methods of weight / (rrf_k + rank) (Cormack et al., 2009; rrf_k = 60 is their constant), so a
chunk both methods rank well comes first, and neither score scale matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .index import ChunkRecord, RagIndex

MODES = ("dense", "bm25", "hybrid")


@dataclass
class SearchConfig:
    """What `gencycle rag search` retrieves."""

    top_k: int = 5
    """chunks to return"""
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    """dense (cosine of embeddings), bm25 (lexical) or hybrid (reciprocal rank fusion of both)"""
    rrf_k: float = 60.0
    """hybrid: the fusion's constant k in 1 / (k + rank)"""


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: its rank (1 = best) and score under `mode` (cosine, BM25 or fused RRF)."""
    chunk: ChunkRecord
    score: float
    rank: int
    mode: str


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], rrf_k: float = 60.0,
                           weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Fuse rankings (ids, best first) into one: score(id) = sum_i weights[i] / (rrf_k + rank_i(id)),
    ranks from 1; ids a ranking lacks get nothing from it. [(id, score)], best first (ties: first seen)."""
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


class Retriever:
    """Search one index. embedder: a SentenceEncoder (default: the one named in the index, loaded
    on the first dense or hybrid search); rrf_k, weights (dense, BM25): the fusion's constants;
    candidates: how many chunks each method ranks before fusing (at least k)."""

    def __init__(self, index: RagIndex | str | Path, embedder=None, rrf_k: float = 60.0,
                 weights: tuple[float, float] = (1.0, 1.0), candidates: int = 50):
        self.index = index if isinstance(index, RagIndex) else RagIndex.open(index, embedder)
        if embedder is not None:
            self.index.check_embedder(embedder.name, embedder.dimension)
        self._embedder = embedder
        self.rrf_k, self.weights, self.candidates = rrf_k, tuple(weights), candidates

    @property
    def embedder(self):
        if self._embedder is None:
            from .embeddings import SentenceEncoder
            self._embedder = SentenceEncoder(self.index.meta["embedder"])
            self.index.check_embedder(self._embedder.name, self._embedder.dimension)
        return self._embedder

    def ranked(self, query: str, k: int = 5, mode: str = "hybrid") -> list[tuple[int, float]]:
        """[(chunk id, score)] of the k best chunks, best first."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty")
        if mode == "bm25":
            return self.index.bm25(query, k)
        vector = self.embedder.encode(query)[0].numpy()
        if mode == "dense":
            return self.index.dense(vector, k)
        depth = max(k, self.candidates)
        dense = [i for i, _ in self.index.dense(vector, depth)]
        lexical = [i for i, _ in self.index.bm25(query, depth)]
        return reciprocal_rank_fusion([dense, lexical], self.rrf_k, self.weights)[:k]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The k best chunks for `query` with their records, ranks and scores."""
        ranked = self.ranked(query, k, mode)
        records = {r.id: r for r in self.index.chunks([i for i, _ in ranked])}
        return [Hit(records[i], score, rank, mode) for rank, (i, score) in enumerate(ranked, 1) if i in records]

    def close(self) -> None:
        self.index.close()
