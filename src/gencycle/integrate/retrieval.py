"""Retrieve chunks for a query: dense (cosine), lexical (BM25), or both fused.

    retriever = Retriever("runs/dialogues.idx")          # loads the embedder the index was built with
    for hit in retriever.search("pizza toppings", k=5, mode="hybrid"):
        print(hit.rank, f"{hit.score:.3f}", hit.chunk.location)

Hybrid: each method ranks its `candidates` best chunks, then the two lists are fused.
- relative (the default; Weaviate's relative score fusion, OpenSearch's min_max normalization
  with an arithmetic mean): each method's scores are scaled to [0, 1] over its own candidates
  (best 1, worst 0), and a chunk's fused score is the weighted mean of its scaled scores, 0 from
  a method that did not return it. How far a chunk is ahead of the others counts, not only its
  place, and the cosine's narrow range and BM25's open one become comparable.
- rrf: reciprocal rank fusion (Cormack et al., 2009), the sum over the methods of
  weight / (rrf_k + rank), rrf_k = 60 their constant: only the places count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import OptionError
from .index import ChunkRecord, RagIndex

MODES = ("dense", "bm25", "hybrid")
FUSIONS = ("relative", "rrf")


@dataclass
class SearchConfig:
    """What `gencycle rag search` retrieves."""

    top_k: int = 5
    """chunks to return, >= 1"""
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    """dense (cosine of embeddings), bm25 (lexical) or hybrid (both, fused)"""
    fusion: Literal["relative", "rrf"] = "relative"
    """hybrid: relative (each method's scores min-max scaled over its candidates, then averaged)
    or rrf (reciprocal rank fusion: 1 / (rrf_k + rank) summed)"""
    rrf_k: float = 60.0
    """hybrid with rrf fusion: the constant k in 1 / (k + rank), >= 0 (0: 1 / rank, the top ranks weigh most)"""

    def __post_init__(self):
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise OptionError("top_k", "must be an integer >= 1", self.top_k)
        if self.mode not in MODES:
            raise OptionError("mode", "must be hybrid, dense or bm25", self.mode)
        if self.fusion not in FUSIONS:
            raise OptionError("fusion", "must be relative or rrf", self.fusion)
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, (int, float)) or not 0 <= self.rrf_k < float("inf"):
            raise OptionError("rrf_k", "must be a finite number >= 0", self.rrf_k)


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: its rank (1 = best) and score under `mode` (cosine, BM25, or the fused
    score: in [0, 1] for relative fusion, a sum of 1 / (rrf_k + rank) for rrf)."""
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
    weights = _check_weights(weights, len(rankings), "rankings")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def _check_weights(weights: Sequence[float] | None, count: int, what: str) -> list[float]:
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} {what}")
    if any(not w >= 0 or w == float("inf") for w in weights) or not sum(weights) > 0:
        raise ValueError(f"weights must be finite and >= 0, not all 0; got {weights}")
    return weights


def min_max_scaled(scored: Sequence[tuple[int, float]]) -> dict[int, float]:
    """{id: (score - min) / (max - min)} over one method's list: its best 1, its worst 0; all 1
    when the scores are equal (one chunk, or a tie: none is worse than another)."""
    if not scored:
        return {}
    values = [s for _, s in scored]
    low, high = min(values), max(values)
    if not high > low:
        return {i: 1.0 for i, _ in scored}
    return {i: (s - low) / (high - low) for i, s in scored}


def relative_score_fusion(scored: Sequence[Sequence[tuple[int, float]]],
                          weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Fuse scored lists ([(id, score)], each one method's candidates) into one: each list min-max
    scaled to [0, 1] (`min_max_scaled`), score(id) = sum_i weights[i] * scaled_i(id) / sum(weights),
    0 from a list that lacks the id. [(id, score)], best first (ties: first seen)."""
    weights = _check_weights(weights, len(scored), "score lists")
    total = sum(weights)
    fused: dict[int, float] = {}
    for items, weight in zip(scored, weights):
        for item, value in min_max_scaled(items).items():
            fused[item] = fused.get(item, 0.0) + weight * value / total
    return sorted(fused.items(), key=lambda pair: -pair[1])


class Retriever:
    """Search one index. embedder: a SentenceEncoder (default: the one named in the index, loaded
    on the first dense or hybrid search); fusion: how hybrid fuses the two lists (relative or
    rrf); weights (dense, BM25) and rrf_k: the fusion's constants; candidates: how many chunks
    each method ranks before fusing (at least k)."""

    def __init__(self, index: RagIndex | str | Path, embedder=None, rrf_k: float = 60.0,
                 weights: tuple[float, float] = (1.0, 1.0), candidates: int = 50, fusion: str = "relative"):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if rrf_k < 0:
            raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
        weights = tuple(_check_weights(weights, 2, "methods (dense, BM25)"))
        self.index = index if isinstance(index, RagIndex) else RagIndex.open(index, embedder)
        if embedder is not None:
            self.index.check_embedder(embedder.name, embedder.dimension)
        self._embedder = embedder
        self.rrf_k, self.weights, self.candidates, self.fusion = rrf_k, weights, candidates, fusion

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
        dense, lexical = self.index.dense(vector, depth), self.index.bm25(query, depth)
        if self.fusion == "rrf":
            return reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]], self.rrf_k,
                                          self.weights)[:k]
        return relative_score_fusion([dense, lexical], self.weights)[:k]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The k best chunks for `query` with their records, ranks and scores."""
        ranked = self.ranked(query, k, mode)
        records = {r.id: r for r in self.index.chunks([i for i, _ in ranked])}
        return [Hit(records[i], score, rank, mode) for rank, (i, score) in enumerate(ranked, 1) if i in records]

    def close(self) -> None:
        self.index.close()
