"""`make bench-rag`: retrieval quality on the shipped dialogues, indexing speed, query latency.

    python -m benchmarks.rag_bench                       # everything (about 15-30 minutes on 2 CPU cores)
    python -m benchmarks.rag_bench --only quality
    python -m benchmarks.rag_bench --only scale --chunks 10000 100000
    python -m benchmarks.rag_bench --only quality hnsw --vectors 100000 200000

Quality: the corpus is the 330 shipped dialogues (data/chitchat-dialogsum, indexed with the default
IndexConfig: all-MiniLM-L6-v2 on gencycle's BERT, 200-token chunks overlapping by 40), the queries
their 330 human-written summaries; a query is answered by the dialogue it summarizes. A dialogue's
rank is that of its best chunk over the full ranking; recall@1, recall@5 and MRR for dense, BM25 and
hybrid as `Retriever` fuses them (each method's best `candidates` chunks, 50 by default): relative
score fusion with equal weights (the default) and reciprocal rank fusion (k = 60, equal weights).
Neither is tuned on these queries. Then, as a check: how the relative fusion's figures move with
the dense weight, and each fusion's constants tuned on the train split's 220 queries only and
reported on the 110 held-out validation + test queries. The reference:
sentence-transformers' embeddings of the same queries and chunks with an exact numpy cosine (the
same metrics must come out), and its encoding speed beside gencycle's.

Scale: the dialogues copied until the index holds about N chunks; each line of copy i starts with
the i-th of a list of one-token words, so chunks differ between copies but are cut at the same
places. At the first size every chunk is embedded for real: chunks/s of the
whole run and of the embedding alone. Past it, copies get the vectors of the chunks they copy
(embedding is per chunk, so its time grows linearly and is extrapolated from the measured rate)
and the rest of the pipeline runs for real: reading, chunking, sqlite3, faiss, BM25. Query
latency: p50 (and p90) of 100 queries (summaries) per mode, top 5, through `Retriever.search`
(query embedding included for dense and hybrid), and faiss' exact search alone, which grows
linearly with the number of vectors and gives the 1M extrapolation.

HNSW (the graph an index keeps from IndexConfig.hnsw_threshold chunks on): synthetic vectors near
the real ones, each a random mix t * a + (1 - t) * b of two of the dialogues' MiniLM chunk vectors
plus Gaussian noise (sigma 0.02 per dimension), normalized, so that they spread over the region
real chunks occupy rather than being copies; the queries are 100 real summaries' embeddings.
Through RagIndex (replace_file, commit, dense): the graph's build time, and per query (one thread,
top 5 and 10) the exact scan's and the graph's latency, and the graph's recall against the scan.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, table
from gencycle.data.dialogsum import load_shipped
from gencycle.integrate import IndexConfig, RagIndex, Retriever, SentenceEncoder, index_documents
from gencycle.integrate import chunk_document
from gencycle.integrate.documents import list_files, read_file, shipped_dialogues
from gencycle.integrate.retrieval import reciprocal_rank_fusion, relative_score_fusion

SPLITS = ("train", "validation", "test")
MODES = ("dense", "bm25", "hybrid", "query embedding only", "faiss search only")


def queries() -> list[tuple[str, str, str]]:
    """(dialogue id, summary, split) for the 330 shipped dialogues."""
    return [(e.id, e.summary, split) for split in SPLITS for e in load_shipped(split)]


def doc_ranking(chunk_ids: list[int], record_of: dict[int, str]) -> list[str]:
    """Dialogue ids in the order of their best chunk."""
    seen: dict[str, None] = {}
    for i in chunk_ids:
        seen.setdefault(record_of[i], None)
    return list(seen)


def metrics(rankings: list[list[str]], answers: list[str]) -> dict[str, float]:
    ranks = [r.index(a) + 1 if a in r else None for r, a in zip(rankings, answers)]
    n = len(answers)
    return {"recall@1": sum(r == 1 for r in ranks) / n, "recall@5": sum(r is not None and r <= 5 for r in ranks) / n,
            "MRR": sum(1 / r for r in ranks if r) / n}


def quality(work: Path, encoder: SentenceEncoder) -> tuple[str, dict]:
    path = work / "dialogues.idx"
    report = index_documents("shipped", path, IndexConfig(progress=False), embedder=encoder)
    index = RagIndex.open(path, encoder)
    n = len(index)
    record_of = {r.id: r.record for r in index.chunks(sorted(index.chunk_ids("dialogues.jsonl")))}
    qs = queries()
    texts, answers = [q[1] for q in qs], [q[0] for q in qs]

    start = time.perf_counter()
    vectors = encoder.encode(texts).numpy()
    ours_s = time.perf_counter() - start
    dense_scored = [index.dense(v, n) for v in vectors]
    lexical_scored = [index.bm25(t, n) for t in texts]
    dense = [[i for i, _ in s] for s in dense_scored]
    lexical = [[i for i, _ in s] for s in lexical_scored]

    # the reference: sentence-transformers on the same folder, exact cosine in numpy
    from sentence_transformers import SentenceTransformer
    from gencycle.assets import resolve
    reference = SentenceTransformer(str(resolve("all-minilm-l6-v2")), device="cpu")
    start = time.perf_counter()
    ref_queries = reference.encode(texts, batch_size=32, normalize_embeddings=True)
    ref_s = time.perf_counter() - start
    chunk_ids = sorted(record_of)
    ref_chunks = reference.encode([r.text for r in index.chunks(chunk_ids)], batch_size=32, normalize_embeddings=True)
    ref_dense = [[chunk_ids[j] for j in np.argsort(-(ref_chunks @ q), kind="stable")] for q in ref_queries]
    index.close()

    def ranked(rankings, subset):
        return metrics([doc_ranking(rankings[i], record_of) for i in subset], [answers[i] for i in subset])

    depth = inspect.signature(Retriever).parameters["candidates"].default  # what Retriever fuses

    def relative(dense_weight):  # Retriever(fusion="relative", weights=(dense_weight, 1 - dense_weight))
        return [[i for i, _ in relative_score_fusion([d[:depth], b[:depth]], (dense_weight, 1 - dense_weight))]
                for d, b in zip(dense_scored, lexical_scored)]

    def rrf(rrf_k, bm25_weight):  # Retriever(fusion="rrf", rrf_k=rrf_k, weights=(1, bm25_weight))
        return [[i for i, _ in reciprocal_rank_fusion([d[:depth], b[:depth]], rrf_k, (1.0, bm25_weight))]
                for d, b in zip(dense, lexical)]

    every = list(range(len(qs)))
    train = [i for i, q in enumerate(qs) if q[2] == "train"]
    held_out = [i for i, q in enumerate(qs) if q[2] != "train"]
    row = lambda name, m: [name, f"{m['recall@1']:.3f}", f"{m['recall@5']:.3f}", f"{m['MRR']:.3f}"]
    rows, results = [], {}
    for name, rankings in [("dense (gencycle MiniLM + faiss)", dense), ("dense (sentence-transformers + numpy)", ref_dense),
                           ("BM25 (bm25s)", lexical),
                           (f"hybrid, relative score fusion (equal weights, {depth} candidates each)", relative(0.5)),
                           (f"hybrid, RRF (k = 60, equal weights, {depth} candidates each)", rrf(60.0, 1.0))]:
        results[name] = m = ranked(rankings, every)
        rows.append(row(name, m))
    goal = {key: max(results["dense (gencycle MiniLM + faiss)"][key], results["BM25 (bm25s)"][key])
            for key in ("recall@1", "recall@5", "MRR")}
    sweep = {w: ranked(relative(w), every) for w in [round(0.05 * i, 2) for i in range(21)]}
    meets = [w for w, m in sweep.items() if all(m[key] >= goal[key] - 1e-12 for key in goal)]
    results["relative fusion by dense weight"] = sweep
    sweep_rows = [row(f"dense weight {w:.2f}", sweep[w]) for w in (0.0, 0.25, 0.5, 0.6, 0.65, 0.75, 0.9, 1.0)]

    rrf_grid = [(k, w) for k in (1, 2, 5, 10, 20, 30, 60, 100) for w in (0.5, 1.0, 1.5, 2.0, 3.0)]
    rrf_best = max(((ranked(rrf(k, w), train), k, w) for k, w in rrf_grid),
                   key=lambda s: (s[0]["MRR"], s[0]["recall@1"], -abs(s[1] - 60)))
    _, k_best, w_best = rrf_best
    rel_best = max(((ranked(relative(w), train), w) for w in [round(0.1 * i, 1) for i in range(1, 10)]),
                   key=lambda s: (s[0]["MRR"], s[0]["recall@1"], -abs(s[1] - 0.5)))
    _, dense_best = rel_best
    held_rows = []
    for name, rankings in [("dense", dense), ("BM25", lexical), ("hybrid, relative (equal weights)", relative(0.5)),
                           (f"hybrid, relative tuned on train (dense weight {dense_best})", relative(dense_best)),
                           ("hybrid, RRF (k = 60, equal weights)", rrf(60.0, 1.0)),
                           (f"hybrid, RRF tuned on train (k = {k_best}, BM25 weight {w_best})", rrf(k_best, w_best))]:
        results["held-out " + name] = m = ranked(rankings, held_out)
        held_rows.append(row(name, m))
    headers = ["method", "recall@1", "recall@5", "MRR"]
    text = (f"Index: {report.chunks} chunks of {len(set(record_of.values()))} dialogues "
            f"({report.embed_seconds:.1f} s to embed). Queries: {len(qs)} summaries.\n\n"
            + table(headers, rows)
            + f"\n\nRelative score fusion by its dense weight (BM25 weight 1 - it), all {len(qs)} queries; "
              f"at least the better of dense and BM25 on every measure for dense weights "
              f"{_weights(meets, sorted(sweep))}:\n\n" + table(headers, sweep_rows)
            + f"\n\nHeld out ({len(held_out)} validation + test queries; tuning on the {len(train)} train queries: "
              f"relative's dense weight over 0.1..0.9, RRF's k over 1..100 and BM25 weight over 0.5..3):\n\n"
            + table(headers, held_rows)
            + f"\n\nQuery embedding, {len(texts)} summaries: gencycle {len(texts) / ours_s:.1f} texts/s, "
              f"sentence-transformers {len(texts) / ref_s:.1f} texts/s (ratio {ref_s / ours_s:.2f}x)")
    results["tuned"] = {"rrf_k": k_best, "bm25_weight": w_best, "relative_dense_weight": dense_best}
    return text, results


def _weights(chosen: list[float], grid: list[float]) -> str:
    """'0.00 to 0.60' when `chosen` is a run of the grid, else the list."""
    if not chosen:
        return "none"
    start = grid.index(chosen[0])
    if grid[start:start + len(chosen)] == chosen and len(chosen) > 2:
        return f"{chosen[0]:.2f} to {chosen[-1]:.2f} (steps of {grid[1] - grid[0]:.2f})"
    return ", ".join(f"{w:.2f}" for w in chosen)


# ---------------------------------------------------------------------------------------- scale
class CopiedVectors:
    """The real encoder's name, tokenizer and limits; `encode` gives a chunk of a copy the vector the real
    encoder gave the same chunk (tags aside) in the first run (a benchmark device: the copies' embedding
    time is extrapolated, not measured)."""

    def __init__(self, encoder: SentenceEncoder, vectors: dict[str, np.ndarray]):
        self.encoder, self.vectors = encoder, vectors
        self.name, self.dimension, self.tokenizer = encoder.name, encoder.dimension, encoder.tokenizer
        self.max_length, self.special_tokens = encoder.max_length, encoder.special_tokens

    def encode(self, texts, progress=False, desc=""):
        return torch.from_numpy(np.stack([self.vectors[_untag(t)] for t in texts]))


def tag_words(tokenizer, count: int) -> list[str]:
    """`count` words that the tokenizer keeps as one token each."""
    words = sorted((i, w) for w, i in tokenizer.backend.get_vocab().items() if w.isalpha() and w.islower()
                   and 4 <= len(w) <= 8)
    out = [w for _, w in words if len(tokenizer.encode(w, add_special_tokens=False)) == 1][:count]
    if len(out) < count:
        raise ValueError(f"only {len(out)} one-token words for {count} copies")
    return out


_TAG = re.compile(r"(^|\n)[a-z]+ (?=#Person\d#:)")


def _untag(text: str) -> str:
    """A chunk without its copy tags (a word before each turn's `#PersonN#:`)."""
    return _TAG.sub(r"\1", text)


def write_copies(folder: Path, words: list[str]) -> None:
    records = [json.loads(line) for line in shipped_dialogues().read_text().splitlines()]
    for i, word in enumerate(words):
        (folder / f"copy_{i:04d}").mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"id": f"{r['id']}#{i}", "dialogue": "\n".join(f"{word} {turn}" for turn in
                                                                           r["dialogue"].split("\n"))})
                 for r in records]
        (folder / f"copy_{i:04d}" / "dialogues.jsonl").write_text("\n".join(lines) + "\n")


def latency(retriever: Retriever, texts: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for mode in ("dense", "bm25", "hybrid"):
        retriever.search(texts[0], 5, mode)  # warm: the first call reads the files
        times = []
        for text in texts:
            start = time.perf_counter()
            retriever.search(text, 5, mode)
            times.append(time.perf_counter() - start)
        out[mode] = (statistics.median(times) * 1e3, statistics.quantiles(times, n=10)[-1] * 1e3)
    times = []
    for text in texts:
        start = time.perf_counter()
        retriever.embedder.encode(text)
        times.append(time.perf_counter() - start)
    out["query embedding only"] = (statistics.median(times) * 1e3, statistics.quantiles(times, n=10)[-1] * 1e3)
    vectors = retriever.embedder.encode(texts).numpy()
    times = []
    for v in vectors:
        start = time.perf_counter()
        retriever.index.dense(v, 5)
        times.append(time.perf_counter() - start)
    out["faiss search only"] = (statistics.median(times) * 1e3, statistics.quantiles(times, n=10)[-1] * 1e3)
    return out


def scale(work: Path, encoder: SentenceEncoder, sizes: list[int]) -> tuple[str, dict]:
    per_copy = None
    rows, lat_rows, results = [], [], {}
    texts = [q[1] for q in queries()[:100]]
    base_vectors: dict[str, np.ndarray] = {}
    rate = None
    for n, target in enumerate(sizes):
        if per_copy is None:  # chunks per copy of the dialogues, from a one-copy index
            words = tag_words(encoder.tokenizer, max(1, round(max(sizes) / 500)))
            write_copies(work / "probe", words[:1])
            config = IndexConfig()
            per_copy = sum(len(chunk_document(d, encoder.tokenizer, config.chunk_tokens, config.chunk_overlap))
                           for f in list_files(work / "probe") for d in read_file(f)[0])
        copies = max(1, round(target / per_copy))
        docs, path = work / f"docs-{target}", work / f"index-{target}"
        if copies > len(words):
            words = tag_words(encoder.tokenizer, copies)
        write_copies(docs, words[:copies])
        real = n == 0
        embedder = encoder if real else CopiedVectors(encoder, base_vectors)
        cpu = time.process_time()
        report = index_documents(docs, path, IndexConfig(progress=real), embedder=embedder)
        cpu = time.process_time() - cpu
        if real:
            rate = report.embedded / report.embed_seconds
            with RagIndex.open(path) as index:
                ids = [i for s in index.files() for i in index.chunk_ids(s)]
                for record, vector in zip(index.chunks(ids), index.vectors_of(ids)):
                    base_vectors.setdefault(_untag(record.text), vector)
            rows.append([f"{report.chunks:,}", "measured", f"{report.chunks / report.seconds:.1f}",
                         f"{rate:.1f}", f"{report.seconds - report.embed_seconds:.1f}", f"{report.seconds:.0f}",
                         f"{cpu:.0f}"])
        else:
            other = report.seconds - report.embed_seconds
            total = other + report.chunks / rate
            rows.append([f"{report.chunks:,}", "extrapolated", f"{report.chunks / total:.1f}",
                         f"{rate:.1f} (first size's)", f"{other:.1f}", f"{total:.0f}", f"{cpu:.0f} besides embedding"])
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20
        retriever = Retriever(path, embedder=encoder)
        lat = latency(retriever, texts)
        retriever.close()
        results[report.chunks] = {"report": report.summary(), "latency_ms": lat, "index_mb": size_mb}
        lat_rows.append([f"{report.chunks:,}", f"{size_mb:.0f}"]
                        + [f"{lat[m][0]:.1f} / {lat[m][1]:.1f}" for m in MODES])
        shutil.rmtree(docs)
    biggest = max(results)
    faiss_ms = results[biggest]["latency_ms"]["faiss search only"][0]
    million = faiss_ms * 1_000_000 / biggest
    text = (table(["chunks", "embedding", "chunks/s (whole run)", "embedding chunks/s", "s besides embedding",
                   "total s", "process CPU s"], rows)
            + "\n\nQuery latency, ms p50 / p90 over 100 queries, top 5 (dense and hybrid include embedding the query):\n\n"
            + table(["chunks", "index MB", "dense", "BM25", "hybrid", "query embedding only", "faiss search only"],
                    lat_rows)
            + f"\n\nAt 1M chunks (linear from {biggest:,}): the exact faiss search alone ~{million:.0f} ms per query, "
              f"vectors {1_000_000 * encoder.dimension * 4 / 2 ** 30:.2f} GiB, embedding "
              f"{1_000_000 / rate / 3600:.1f} h at the measured rate.")
    return text, results


# ---------------------------------------------------------------------------------------- hnsw
def hnsw(work: Path, encoder: SentenceEncoder, sizes: list[int]) -> tuple[str, dict]:
    from gencycle.integrate.chunking import Chunk
    path = work / "dialogues.idx"
    if not path.exists():
        index_documents("shipped", path, IndexConfig(progress=False), embedder=encoder)
    with RagIndex.open(path, encoder) as index:
        real = index.vectors_of(sorted(index.chunk_ids("dialogues.jsonl")))
    queries_ = encoder.encode([q[1] for q in queries()[:100]]).numpy()
    rng = np.random.default_rng(0)
    rows, results = [], {}
    for n in sizes:
        a, b = real[rng.integers(0, len(real), n)], real[rng.integers(0, len(real), n)]
        t = rng.random((n, 1), dtype="float32")
        vectors = t * a + (1 - t) * b + rng.normal(0, 0.02, a.shape).astype("float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = RagIndex.create(work / f"hnsw-{n}", encoder.name, encoder.dimension, 200, 40)
        chunks = [Chunk("synthetic", None, "synthetic chunk", 0, 1, 1, 1, 1) for _ in range(n)]
        index.replace_file("synthetic", "-", chunks, vectors)
        start, cpu = time.perf_counter(), time.process_time()
        index.commit(hnsw_threshold=1)
        build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu
        figures = {"build_s": build_s, "build_cpu_s": build_cpu}
        for k in (5, 10):
            exact_ms, graph_ms, found = [], [], 0
            for q in queries_:
                start = time.perf_counter()
                truth = {i for i, _ in index.dense(q, k, exact=True)}
                exact_ms.append((time.perf_counter() - start) * 1e3)
                start = time.perf_counter()
                got = {i for i, _ in index.dense(q, k)}
                graph_ms.append((time.perf_counter() - start) * 1e3)
                found += len(got & truth)
            figures[k] = {"exact_ms": statistics.median(exact_ms), "graph_ms": statistics.median(graph_ms),
                          "recall": found / (k * len(queries_))}
        index.close()
        shutil.rmtree(work / f"hnsw-{n}")
        results[n] = figures
        rows.append([f"{n:,}", f"{build_s:.0f} ({build_cpu:.0f} CPU)", f"{figures[5]['exact_ms']:.1f}",
                     f"{figures[5]['graph_ms']:.2f}", f"{figures[5]['recall']:.3f}", f"{figures[10]['recall']:.3f}",
                     f"{figures[5]['exact_ms'] / figures[5]['graph_ms']:.0f}x"])
    text = table(["vectors", "graph build s", "exact scan ms p50 (top 5)", "HNSW ms p50 (top 5)", "HNSW recall@5",
                  "HNSW recall@10", "exact / HNSW"], rows)
    return text, results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rag_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=("quality", "scale", "hnsw"),
                        help="parts to run (default: all; hnsw reuses quality's index when both run)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000],
                        help="index sizes; the first is embedded for real")
    parser.add_argument("--vectors", type=int, nargs="+", default=[100_000, 200_000],
                        help="HNSW part: synthetic index sizes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="gencycle-rag-bench-"))
    encoder = SentenceEncoder()
    print(f"Machine: {machine()}.\n")
    figures = {}
    try:
        if args.only is None or "quality" in args.only:
            text, figures["quality"] = quality(work, encoder)
            print("## Retrieval on the shipped dialogues (queries: their human summaries)\n\n" + text + "\n", flush=True)
        if args.only is None or "scale" in args.only:
            text, figures["scale"] = scale(work, encoder, args.chunks)
            print("## Indexing speed and query latency (copies of the dialogues)\n\n" + text + "\n", flush=True)
        if args.only is None or "hnsw" in args.only:
            text, figures["hnsw"] = hnsw(work, encoder, args.vectors)
            print("## HNSW against the exact scan (synthetic vectors near the dialogues' own)\n\n" + text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
