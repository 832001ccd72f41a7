"""Index a folder of documents: read, chunk, embed in batches, store; again later, only what changed.

    report = index_documents("notes/", "runs/notes.idx")               # IndexConfig() defaults
    report = index_documents("shipped", "runs/dialogues.idx", IndexConfig(chunk_tokens=128))
    print(report.summary())

A file is new or changed when the SHA-256 of its bytes differs from the one the index holds;
unchanged files are not read further, deleted files lose their chunks. A changed file's
chunks whose text did not change keep their stored vectors (appending to a file embeds only
its new chunks). Files that are not UTF-8 (and JSONL lines without text) are skipped with a
warning that names them; a skipped file that was indexed before loses its old chunks.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..assets import DEFAULT_ENCODER
from ..errors import OptionError
from .chunking import Chunk, check_sizes, chunk_document
from .documents import file_hash, list_files, read_file
from .embeddings import SentenceEncoder, embedder_name
from .index import DB_NAME, HNSW_THRESHOLD, RagIndex


@dataclass
class IndexConfig:
    """How documents become chunks and vectors."""

    embedder: str = DEFAULT_ENCODER
    """encoder (BERT family) that embeds the chunks: a model folder or packaged name"""
    chunk_tokens: int = 200
    """tokens per chunk at most, counted by the embedder's tokenizer, >= 1"""
    chunk_overlap: int = 40
    """tokens that consecutive chunks of a document share, less than --chunk-tokens (0: none)"""
    batch_size: int = 32
    """chunks per embedding batch, >= 1"""
    rebuild: bool = False
    """start the index afresh (to change the embedder or the chunk sizes)"""
    device: str | None = None
    """cpu, cuda, ... for the embedder (default: the GPU when there is one)"""
    progress: bool = True
    """show a progress bar while embedding"""
    hnsw_threshold: int = HNSW_THRESHOLD
    """chunks from which dense search walks an HNSW graph (faiss, approximate, built at each commit)
    instead of scanning every vector exactly, >= 1"""

    def __post_init__(self):
        for name, minimum in (("chunk_tokens", 1), ("chunk_overlap", 0), ("batch_size", 1), ("hnsw_threshold", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise OptionError(name, f"must be an integer >= {minimum}", value)
        if self.chunk_overlap >= self.chunk_tokens:
            raise OptionError("chunk_overlap", f"must be less than chunk_tokens ({self.chunk_tokens})",
                              self.chunk_overlap)
        if not isinstance(self.embedder, str) or not self.embedder.strip():
            raise OptionError("embedder", "must name an encoder: a model folder or packaged name", self.embedder)
        if self.device is not None:
            from ..checkpoints.devices import resolve_device
            resolve_device(self.device)


@dataclass
class IndexReport:
    """What an indexing run did."""
    path: Path
    files: int = 0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    chunks: int = 0              # in the index after the run
    embedded: int = 0            # chunks embedded by this run
    reused: int = 0              # chunks of changed files whose stored vectors were kept
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0

    def summary(self) -> str:
        rate = f", {self.embedded / self.embed_seconds:.1f} chunks/s" if self.embedded and self.embed_seconds else ""
        lines = [f"index {self.path}: {self.chunks} chunks from {self.files} files",
                 f"  {len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
                 f"{self.unchanged} unchanged; {self.embedded} chunks embedded{rate}, {self.reused} reused; "
                 f"{self.seconds:.1f} s"]
        lines += [f"  {problem}" for problem in self.skipped]
        return "\n".join(lines)


def index_documents(documents: str | Path, index_path: str | Path, config: IndexConfig | None = None,
                    embedder: SentenceEncoder | None = None, **overrides) -> IndexReport:
    """Bring the index at `index_path` up to date with the documents folder (or file) `documents`.

    embedder: an encoder already loaded (else `config.embedder` is loaded when something needs embedding).
    Keyword overrides replace fields of `config`: index_documents(docs, path, chunk_tokens=128).
    """
    import dataclasses
    config = dataclasses.replace(config or IndexConfig(), **overrides)
    started = time.perf_counter()
    files = list_files(documents)
    check_sizes(config.chunk_tokens, config.chunk_overlap)
    name = embedder.name if embedder is not None else embedder_name(config.embedder)
    index_path = Path(index_path).expanduser()
    if config.rebuild:
        remove_index(index_path)
    report = IndexReport(index_path, files=len(files))

    index = RagIndex.open(index_path) if (index_path / DB_NAME).exists() else None
    if index is not None:
        _check_settings(index, name, config)
    encoder = embedder

    def load_encoder() -> SentenceEncoder:
        nonlocal encoder
        if encoder is None:
            encoder = SentenceEncoder(config.embedder, batch_size=config.batch_size, device=config.device)
        check_sizes(config.chunk_tokens, config.chunk_overlap, encoder.max_length - encoder.special_tokens)
        return encoder

    try:
        known = index.files() if index is not None else {}
        pending: list[tuple[str, str, list[Chunk]]] = []   # (source, sha256, chunks) to store
        for file in files:
            data = file.path.read_bytes()
            sha = file_hash(data)
            if known.get(file.source) == sha:
                report.unchanged += 1
                continue
            docs, problems = read_file(file, data)
            for problem in problems:
                warnings.warn(problem, stacklevel=2)
            report.skipped += problems
            if not docs and problems and file.source in known:
                report.removed.append(file.source)  # unreadable now: its old text is gone
                continue
            if not docs and problems:
                continue
            tokenizer = load_encoder().tokenizer
            chunks = [c for d in docs for c in chunk_document(d, tokenizer, config.chunk_tokens,
                                                                      config.chunk_overlap)]
            (report.changed if file.source in known else report.added).append(file.source)
            pending.append((file.source, sha, chunks))
        present = {f.source for f in files}
        report.removed += sorted(s for s in known if s not in present)
        if index is None and not pending:
            raise ValueError(f"no document in {str(documents)!r} could be read: " + "; ".join(report.skipped))
        if index is None:
            encoder = load_encoder()
            index = RagIndex.create(index_path, encoder.name, encoder.dimension, config.chunk_tokens,
                                    config.chunk_overlap)
        elif encoder is not None:
            index.check_embedder(encoder.name, encoder.dimension)
        for source in report.removed:
            index.remove_file(source)

        # vectors: reuse a changed file's unchanged chunks, embed the rest in one batched pass
        wanted: list[Chunk] = []
        reuse: dict[str, object] = {}
        for source, _, chunks in pending:
            old = index.chunks(index.chunk_ids(source))
            by_hash = {r.sha256: r.id for r in old}
            hits = [by_hash[c.sha256] for c in chunks if c.sha256 in by_hash]
            reuse.update(zip((r.sha256 for r in index.chunks(hits)), index.vectors_of(hits)))
            wanted += [c for c in chunks if c.sha256 not in reuse]
        texts = list({c.text: None for c in wanted})   # each distinct text once
        embed_start = time.perf_counter()
        vectors = load_encoder().encode(texts, progress=config.progress, desc="embedding chunks").numpy() \
            if texts else []
        report.embed_seconds = time.perf_counter() - embed_start
        by_text = dict(zip(texts, vectors))
        report.embedded = len(texts)
        for source, sha, chunks in pending:
            rows = [reuse[c.sha256] if c.sha256 in reuse else by_text[c.text] for c in chunks]
            report.reused += sum(c.sha256 in reuse for c in chunks)
            index.replace_file(source, sha, chunks, np.stack(rows) if rows else np.empty((0, index.dimension)))
        index.commit(progress=config.progress, hnsw_threshold=config.hnsw_threshold)
        report.chunks = len(index)
    finally:
        if index is not None:
            index.close()
    report.seconds = time.perf_counter() - started
    return report


def _check_settings(index: RagIndex, name: str, config: IndexConfig) -> None:
    built = index.meta
    if built["embedder"] != name:
        index.close()
        raise ValueError(f"the index at {str(index.path)!r} was built with the embedder {built['embedder']!r}, "
                         f"not {name!r}: use that embedder, or pass --rebuild (rebuild=True) to start afresh")
    if (built["chunk_tokens"], built["chunk_overlap"]) != (config.chunk_tokens, config.chunk_overlap):
        index.close()
        raise ValueError(f"the index at {str(index.path)!r} was built with chunk_tokens={built['chunk_tokens']} "
                         f"and chunk_overlap={built['chunk_overlap']}, not {config.chunk_tokens} and "
                         f"{config.chunk_overlap}: use those, or pass --rebuild (rebuild=True) to start afresh")


def remove_index(path: str | Path) -> None:
    """Delete the files of an index (only those: chunks.sqlite, vectors-*.faiss, bm25-*)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return
    for item in [path / DB_NAME, *path.glob("vectors-*.faiss"), *path.glob("bm25-*")]:
        if item.is_dir():
            shutil.rmtree(item)
        elif item.exists():
            item.unlink()
