"""Moved to `gencycle.integrate.embeddings` (the integrate stage: embeddings, index, retrieval).

Kept so that `from gencycle.embeddings import SentenceEncoder` still works; new code imports
from `gencycle.integrate.embeddings`.
"""

from gencycle.integrate.embeddings import SentenceEncoder, mean_pool

__all__ = ["SentenceEncoder", "mean_pool"]
