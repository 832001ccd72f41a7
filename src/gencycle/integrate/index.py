"""A persistent RAG index in one folder: faiss for the vectors, sqlite3 for the chunk records.

    index = RagIndex.create("runs/notes.idx", embedder="all-minilm-l6-v2", dimension=384,
                            chunk_tokens=200, chunk_overlap=40)
    index.replace_file("a.md", sha256, chunks, vectors)       # or index.remove_file("b.md")
    index.commit()                                            # writes everything, atomically
    index = RagIndex.open("runs/notes.idx", embedder=encoder) # refuses another embedder
    index.dense(query_vector, k=5), index.bm25("pizza", k=5)  # [(chunk id, score), ...]

The folder holds
    chunks.sqlite        meta (embedder name, dimension, chunk sizes, which generation is current),
                         files (source path, SHA-256 of its bytes, chunk count), chunks (source, JSONL
                         record id, line range, character span, SHA-256 of the text, the text)
    vectors-<gen>.faiss  faiss IndexIDMap2 over an exact inner-product index (IndexFlatIP) of the
                         normalized vectors, so a score is the cosine; ids are the chunk ids
    hnsw-<gen>.faiss     from `hnsw_threshold` chunks on (200,000 by default): an HNSW graph of the
                         same vectors (faiss IndexHNSWFlat, inner product), rebuilt at each commit,
                         which dense search walks instead of scanning every vector (approximate:
                         it can miss a true neighbour; the exact file stays the record)
    bm25-<gen>/          a bm25s index of the chunk texts (lowercased, English stop words removed,
                         Porter-stemmed), and the chunk id of each of its rows

Why the pair: faiss is the field's standard vector search (exact below the threshold, HNSW
above it: an exact scan grows linearly, ~270 ms per query at 1M chunks on this machine), sqlite3 is in Python's standard library, keeps the
records in one file and commits them as one transaction. A commit writes the new generation's
vector and BM25 files first, then switches the current generation inside the sqlite transaction,
then deletes the old files: a crash at any point leaves the old or the new index, whole.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

VERSION = 1
DB_NAME = "chunks.sqlite"
HNSW_THRESHOLD = 200_000   # chunks from which dense search uses an HNSW graph
HNSW_M = 32                # graph neighbours per vector (faiss' M)
HNSW_EF_CONSTRUCTION = 64  # candidates kept while inserting a vector
HNSW_EF_SEARCH = 128       # candidates kept while searching (more: better recall, slower)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (source TEXT PRIMARY KEY, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, record TEXT, start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL, start_char INTEGER NOT NULL, end_char INTEGER NOT NULL,
    sha256 TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_source ON chunks (source);
"""


def _require(module: str, package: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the RAG index needs the package {package!r}: pip install 'gencycle[rag]'") from None


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk. Lines are 1-based and inclusive."""
    id: int
    source: str
    record: str | None
    start_line: int
    end_line: int
    start_char: int
    end_char: int
    sha256: str
    text: str

    @property
    def location(self) -> str:
        return location(self.source, self.record, self.start_line, self.end_line)


def location(source: str, record: str | None, start_line: int, end_line: int) -> str:
    """Where a passage is: `notes.md:3-17`, or `dialogues.jsonl:12 (chitchat_012)` for a JSONL record."""
    lines = f"{start_line}" if start_line == end_line else f"{start_line}-{end_line}"
    return f"{source}:{lines}" + (f" ({record})" if record is not None else "")


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer
    stem = lru_cache(maxsize=200_000)(PorterStemmer().stem)
    return lambda words: [stem(w) for w in words]


def bm25_tokens(texts: list[str]) -> list[list[str]]:
    """The BM25 terms of each text: lowercased words of 2+ characters, no English stop words, stemmed."""
    bm25s = _require("bm25s", "bm25s")
    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


class RagIndex:
    """The index folder, open. Changes stay in memory and in an open sqlite transaction until commit()."""

    def __init__(self, path: Path, db: sqlite3.Connection, meta: dict):
        self.path, self.db, self.meta = path, db, meta
        self._vectors = None           # the faiss index, read on first use
        self._bm25 = None              # (bm25s.BM25, chunk ids of its rows), read on first use
        self._hnsw = None              # the HNSW graph of this generation, when it has one, read on first use
        self.hnsw_ef_search = HNSW_EF_SEARCH
        self._dirty = False
        self._committed = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]  # what the vector file holds

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, embedder: str, dimension: int, chunk_tokens: int,
               chunk_overlap: int) -> "RagIndex":
        """A new, empty index at `path` (a folder that must not hold an index yet)."""
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"the index path {str(path)!r} is a file; an index is a folder")
        if (path / DB_NAME).exists():
            raise ValueError(f"{str(path)!r} already holds an index")
        path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path / DB_NAME, isolation_level="DEFERRED")
        db.executescript(SCHEMA)
        meta = {"version": VERSION, "embedder": embedder, "dimension": int(dimension),
                "chunk_tokens": int(chunk_tokens), "chunk_overlap": int(chunk_overlap), "generation": 0}
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.commit()
        index = cls(path, db, meta)
        index._vectors = _new_vectors(int(dimension))
        return index

    @classmethod
    def open(cls, path: str | Path, embedder=None) -> "RagIndex":
        """An existing index. `embedder` (a SentenceEncoder, or anything with `name` and `dimension`):
        refuse when it is not the one the index was built with."""
        path = Path(path).expanduser()
        if not (path / DB_NAME).is_file():
            what = "does not exist" if not path.exists() else f"has no {DB_NAME}"
            raise FileNotFoundError(f"no RAG index at {str(path)!r}: it {what} (build one with `gencycle rag index`)")
        try:
            db = sqlite3.connect(path / DB_NAME, isolation_level="DEFERRED")
            meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{str(path / DB_NAME)!r} is not a gencycle RAG index ({error})") from None
        if meta.get("version") != VERSION:
            raise ValueError(f"the index at {str(path)!r} has format version {meta.get('version')}; "
                             f"this gencycle reads version {VERSION}: rebuild it")
        index = cls(path, db, meta)
        if embedder is not None:
            index.check_embedder(embedder.name, embedder.dimension)
        return index

    def check_embedder(self, name: str, dimension: int) -> None:
        built = (self.meta["embedder"], self.meta["dimension"])
        if (name, int(dimension)) != built:
            raise ValueError(f"the index at {str(self.path)!r} was built with the embedder {built[0]!r} "
                             f"({built[1]} dimensions), not {name!r} ({dimension} dimensions): use that "
                             f"embedder, or rebuild the index (gencycle rag index ... --rebuild)")

    def close(self) -> None:
        if self._dirty:
            self.db.rollback()
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- what it holds ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    @property
    def dimension(self) -> int:
        return self.meta["dimension"]

    def files(self) -> dict[str, str]:
        """source -> SHA-256 of the file's bytes when it was indexed."""
        return dict(self.db.execute("SELECT source, sha256 FROM files"))

    def chunks(self, ids: list[int]) -> list[ChunkRecord]:
        """The records of chunk ids, in the order given."""
        if not ids:
            return []
        found = {}
        for start in range(0, len(ids), 900):  # sqlite's limit on bound parameters
            part = ids[start:start + 900]
            rows = self.db.execute(f"SELECT * FROM chunks WHERE id IN ({','.join('?' * len(part))})", part)
            found.update((row[0], ChunkRecord(*row)) for row in rows)
        return [found[i] for i in ids if i in found]

    def chunk_ids(self, source: str) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT id FROM chunks WHERE source = ? ORDER BY id", (source,))]

    def vectors_of(self, ids: list[int]) -> np.ndarray:
        """The stored vectors of chunk ids, (N, d) float32."""
        vectors = self._faiss()
        return np.stack([vectors.reconstruct(int(i)) for i in ids]) if ids else np.empty((0, self.dimension), "float32")

    # ---- changing it ------------------------------------------------------------------------
    def remove_file(self, source: str) -> int:
        """Drop a file's chunks; returns how many."""
        ids = self.chunk_ids(source)
        if ids:
            self._faiss().remove_ids(np.asarray(ids, dtype="int64"))
        self._hnsw = None  # stale until the next commit: dense search scans the exact index meanwhile
        self.db.execute("DELETE FROM chunks WHERE source = ?", (source,))
        self.db.execute("DELETE FROM files WHERE source = ?", (source,))
        self._dirty = True
        return len(ids)

    def replace_file(self, source: str, sha256: str, chunks, vectors) -> list[int]:
        """Store a file's chunks (its old ones dropped) with their vectors (N, d); returns the new ids."""
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype="float32"))
        if vectors.shape != (len(chunks), self.dimension):
            raise ValueError(f"{len(chunks)} chunks need vectors of shape ({len(chunks)}, {self.dimension}), "
                             f"got {vectors.shape}")
        self.remove_file(source)
        first = (self.db.execute("SELECT MAX(id) FROM chunks").fetchone()[0] or 0) + 1
        first = max(first, self.meta.get("next_id", 1))  # ids of dropped chunks are never reused
        ids = list(range(first, first + len(chunks)))
        self.db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (i, c.source, c.record, c.start_line, c.end_line, c.start_char, c.end_char, c.sha256, c.text)
            for i, c in zip(ids, chunks)])
        self.db.execute("INSERT INTO files VALUES (?, ?, ?)", (source, sha256, len(chunks)))
        if ids:
            self._faiss().add_with_ids(vectors, np.asarray(ids, dtype="int64"))
        self.meta["next_id"] = first + len(chunks)
        self._dirty = True
        return ids

    @property
    def has_hnsw(self) -> bool:
        """Whether the committed generation holds an HNSW graph (dense search is then approximate)."""
        return (self.path / f"hnsw-{self.meta['generation']}.faiss").is_file()

    def commit(self, progress: bool = False, hnsw_threshold: int = HNSW_THRESHOLD) -> None:
        """Write the vectors and the BM25 index of a new generation, then switch to it in one transaction.
        With `hnsw_threshold` chunks or more, also an HNSW graph of the vectors for dense search."""
        if isinstance(hnsw_threshold, bool) or not isinstance(hnsw_threshold, int) or hnsw_threshold < 1:
            raise ValueError(f"hnsw_threshold must be an integer >= 1, got {hnsw_threshold!r}")
        wants_hnsw = len(self) >= hnsw_threshold
        if not self._dirty and self.meta["generation"] > 0 and wants_hnsw == self.has_hnsw:
            return
        faiss = _require("faiss", "faiss-cpu")
        generation = self.meta["generation"] + 1
        faiss.write_index(self._faiss(), str(self.path / f"vectors-{generation}.faiss"))
        self._hnsw = None
        if wants_hnsw:
            graph = self._build_hnsw(progress)
            faiss.write_index(graph, str(self.path / f"hnsw-{generation}.faiss"))
            self._hnsw = graph
        self._bm25 = self._build_bm25(self.path / f"bm25-{generation}", progress)
        self.meta["generation"] = generation
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [(k, json.dumps(self.meta[k])) for k in ("generation", "next_id") if k in self.meta])
        self.db.commit()
        self._dirty, self._committed = False, len(self)
        current = (f"vectors-{generation}.faiss", f"hnsw-{generation}.faiss", f"bm25-{generation}")
        for old in [*self.path.glob("vectors-*.faiss"), *self.path.glob("hnsw-*.faiss"), *self.path.glob("bm25-*")]:
            if old.name not in current:
                shutil.rmtree(old) if old.is_dir() else old.unlink()

    def _build_hnsw(self, progress: bool):
        """An HNSW graph (inner product) of the exact index's vectors, with the same ids."""
        faiss = _require("faiss", "faiss-cpu")
        exact = self._faiss()
        ids = faiss.vector_to_array(exact.id_map).astype("int64")
        flat = faiss.downcast_index(exact.index)
        graph = faiss.IndexHNSWFlat(self.dimension, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(graph)
        step = 20_000
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(ids), desc="HNSW graph", unit="vectors")
        for start in range(0, len(ids), step):
            part = flat.reconstruct_n(start, min(step, len(ids) - start))
            index.add_with_ids(np.ascontiguousarray(part), ids[start:start + len(part)])
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return index

    def _graph(self):
        """The committed HNSW graph, or None (no graph, or uncommitted changes: the exact index then)."""
        if self._dirty or self.meta["generation"] == 0:
            return None
        if self._hnsw is None and self.has_hnsw:
            faiss = _require("faiss", "faiss-cpu")
            self._hnsw = faiss.read_index(str(self.path / f"hnsw-{self.meta['generation']}.faiss"))
            if self._hnsw.ntotal != self._committed:
                raise ValueError(f"the index at {str(self.path)!r} is inconsistent ({self._hnsw.ntotal} vectors "
                                 f"in its HNSW graph, {self._committed} chunks): rebuild it")
        if self._hnsw is not None:
            faiss = _require("faiss", "faiss-cpu")
            faiss.downcast_index(self._hnsw.index).hnsw.efSearch = self.hnsw_ef_search
        return self._hnsw

    def _build_bm25(self, folder: Path, progress: bool):
        bm25s = _require("bm25s", "bm25s")
        rows = self.db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        folder.mkdir(parents=True, exist_ok=True)
        ids = np.asarray([r[0] for r in rows], dtype="int64")
        np.save(folder / "ids.npy", ids)
        tokens = bm25_tokens([r[1] for r in rows])
        if not any(tokens):  # no chunk, or none with a term (only stop words or 1-letter words)
            return None, ids
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=progress)
        retriever.save(str(folder), show_progress=False)
        return retriever, ids

    # ---- searching --------------------------------------------------------------------------
    def _faiss(self):
        if self._vectors is None and self.meta["generation"] == 0:  # created, never committed
            self._vectors = _new_vectors(self.dimension)
        if self._vectors is None:
            faiss = _require("faiss", "faiss-cpu")
            file = self.path / f"vectors-{self.meta['generation']}.faiss"
            if not file.is_file():
                raise ValueError(f"the index at {str(self.path)!r} is incomplete: {file.name} is missing (rebuild it)")
            self._vectors = faiss.read_index(str(file))
            if self._vectors.ntotal != self._committed:
                raise ValueError(f"the index at {str(self.path)!r} is inconsistent ({self._vectors.ntotal} vectors, "
                                 f"{self._committed} chunks): rebuild it")
        return self._vectors

    def dense(self, query: np.ndarray, k: int, exact: bool = False) -> list[tuple[int, float]]:
        """The k chunks whose vectors have the largest inner product with `query` (d,): the cosine when
        both are normalized. [(chunk id, score)], best first. Through the HNSW graph when the index has
        one (approximate; searching more than hnsw_ef_search chunks widens its search to k), unless
        `exact`."""
        vectors = None if exact else self._graph()
        if vectors is not None and k > self.hnsw_ef_search:
            faiss = _require("faiss", "faiss-cpu")
            faiss.downcast_index(vectors.index).hnsw.efSearch = k
        vectors = vectors if vectors is not None else self._faiss()
        k = min(k, vectors.ntotal)
        if k <= 0:
            return []
        query = np.ascontiguousarray(np.asarray(query, dtype="float32").reshape(1, -1))
        if query.shape[1] != self.dimension:
            raise ValueError(f"query vector has {query.shape[1]} dimensions, the index {self.dimension}")
        faiss = _require("faiss", "faiss-cpu")
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # one query: OpenMP's fork and join cost more than they save
        try:
            scores, ids = vectors.search(query, k)
        finally:
            faiss.omp_set_num_threads(threads)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        """The k chunks with the highest BM25 score for `query` (only chunks sharing a term with it)."""
        if self._bm25 is None and self.meta["generation"] == 0:
            return []
        if self._bm25 is None:
            bm25s = _require("bm25s", "bm25s")
            folder = self.path / f"bm25-{self.meta['generation']}"
            if not (folder / "ids.npy").is_file():
                raise ValueError(f"the index at {str(self.path)!r} is incomplete: {folder.name} is missing (rebuild it)")
            ids = np.load(folder / "ids.npy")
            saved = any(p.name != "ids.npy" for p in folder.iterdir())  # none when no chunk has a term
            self._bm25 = (bm25s.BM25.load(str(folder), show_progress=False) if saved else None, ids)
        retriever, ids = self._bm25
        terms = bm25_tokens([query])[0]
        if retriever is None or not any(t in retriever.vocab_dict for t in terms):
            return []
        rows, scores = retriever.retrieve([terms], k=min(k, len(ids)), show_progress=False, n_threads=0)
        return [(int(ids[r]), float(s)) for r, s in zip(rows[0], scores[0]) if s > 0]


def _new_vectors(dimension: int):
    faiss = _require("faiss", "faiss-cpu")
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
