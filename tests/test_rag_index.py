"""RAG indexing on a tiny random encoder: documents, chunks, the faiss + sqlite3 index, re-indexing
(add, change, delete a file), and bad input (missing or empty folder, non-UTF-8, another embedder)."""

import sqlite3

import numpy as np
import pytest

from gencycle.integrate import Document, IndexConfig, RagIndex, SentenceEncoder, chunk_document, index_documents
from gencycle.integrate.chunking import check_sizes
from gencycle.integrate.documents import list_files, read_file, resolve_documents
from tiny_encoder import save_tiny_encoder

pytest.importorskip("faiss")
pytest.importorskip("bm25s")
pytestmark = pytest.mark.usefixtures("one_thread")

CAT = "the cat sat on the mat\nthe dog ran far\n"


class CountingEncoder(SentenceEncoder):
    """The real tiny encoder; it also records the texts it embedded (a spy, not a stand-in)."""

    def encode(self, texts, progress=False, desc="embedding"):
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.seen = getattr(self, "seen", []) + texts
        return super().encode(texts, progress, desc)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return CountingEncoder(save_tiny_encoder(tmp_path_factory.mktemp("encoder")))


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(CAT * 6)
    (folder / "sub" / "b.md").write_text("# pizza\npizza with cheese\nthe weather is sunny\n")
    (folder / "d.jsonl").write_text('{"id": "x1", "dialogue": "#Person1#: where is the station?\\n'
                                    '#Person2#: left at the bank."}\n\n{"id": "x2", "text": "lost my keys"}\n')
    (folder / "ignored.csv").write_text("not,indexed\n")
    (folder / ".hidden.txt").write_text("not indexed")
    return folder


def _index(docs, path, encoder, **overrides):
    encoder.seen = []
    settings = {"chunk_tokens": 12, "chunk_overlap": 3, "progress": False, **overrides}
    return index_documents(docs, path, embedder=encoder, **settings)


# ------------------------------------------------------------------ documents and chunks
def test_files_of_a_folder_and_of_one_file(docs):
    assert [f.source for f in list_files(docs)] == ["a.txt", "d.jsonl", "sub/b.md"]
    assert [f.source for f in list_files(docs / "d.jsonl")] == ["d.jsonl"]
    assert resolve_documents("shipped").name == "dialogues.jsonl"


def test_jsonl_records_are_documents_with_their_line_and_id(docs):
    documents, problems = read_file(list_files(docs / "d.jsonl")[0])
    assert [(d.record, d.first_line) for d in documents] == [("x1", 1), ("x2", 3)] and problems == []
    assert documents[0].text.startswith("#Person1#: where")


def test_chunks_have_at_most_n_tokens_overlap_and_line_ranges(encoder):
    chunks = chunk_document(Document("a.txt", CAT * 6), encoder.tokenizer, chunk_tokens=12, chunk_overlap=3)
    assert len(chunks) > 3 and all(c.tokens <= 12 for c in chunks)
    ids = encoder.tokenizer.backend.encode(CAT * 6, add_special_tokens=False).offsets
    starts = [next(i for i, span in enumerate(ids) if span[0] == c.start_char) for c in chunks]
    ends = [next(i for i, span in enumerate(ids) if span[1] == c.end_char) + 1 for c in chunks]
    assert all(nxt == end - 3 for end, nxt in zip(ends, starts[1:]))          # 3 tokens shared
    assert ends[-1] == len(ids)                                                 # the end is covered
    text = CAT * 6
    for c in chunks:
        assert text[c.start_char:c.end_char] == c.text
        assert c.start_line == text.count("\n", 0, c.start_char) + 1
        assert c.end_line == text.count("\n", 0, c.end_char - 1) + 1
    assert chunks[0].text == "the cat sat on the mat\nthe dog ran far"          # ended at a line break


def test_a_jsonl_records_chunks_carry_its_line(encoder):
    doc = Document("d.jsonl", "where is the station\nleft at the bank\n" * 4, first_line=7, record="x")
    chunks = chunk_document(doc, encoder.tokenizer, chunk_tokens=8, chunk_overlap=2)
    assert len(chunks) > 1 and {(c.start_line, c.end_line, c.record) for c in chunks} == {(7, 7, "x")}


def test_bad_chunk_sizes_are_refused():
    with pytest.raises(ValueError, match="chunk_overlap must be >= 0 and less than chunk_tokens"):
        check_sizes(10, 10)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        check_sizes(0, 0)
    with pytest.raises(ValueError, match="more than the embedder reads per text"):
        check_sizes(300, 10, limit=254)


# ------------------------------------------------------------------ the index
def test_index_stores_chunks_vectors_and_records(docs, tmp_path, encoder):
    report = _index(docs, tmp_path / "idx", encoder)
    assert (report.files, sorted(report.added), report.removed, report.skipped) == \
        (3, ["a.txt", "d.jsonl", "sub/b.md"], [], [])
    assert report.embedded == len(set(encoder.seen)) and report.chunks >= report.embedded
    with RagIndex.open(tmp_path / "idx", encoder) as index:
        assert len(index) == report.chunks and index.meta["embedder"] == encoder.name
        assert index.meta["dimension"] == 32 and index.meta["chunk_tokens"] == 12
        records = index.chunks(index.chunk_ids("sub/b.md"))
        assert records[0].location == "sub/b.md:1-3" and records[0].text.startswith("# pizza")
        jsonl = index.chunks(index.chunk_ids("d.jsonl"))
        assert {r.location for r in jsonl} == {"d.jsonl:1 (x1)", "d.jsonl:3 (x2)"}
        stored = index.vectors_of([r.id for r in records])
        expected = encoder.encode([r.text for r in records]).numpy()
        np.testing.assert_allclose(stored, expected, atol=1e-5)
        assert np.allclose(np.linalg.norm(stored, axis=1), 1, atol=1e-5)
        assert set(index.files()) == {"a.txt", "d.jsonl", "sub/b.md"}
    names = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert names == ["bm25-1", "chunks.sqlite", "vectors-1.faiss"]


def test_reindexing_embeds_only_new_and_changed_files_and_drops_deleted_ones(docs, tmp_path, encoder):
    path = tmp_path / "idx"
    first = _index(docs, path, encoder)
    with RagIndex.open(path) as index:
        a_ids = index.chunk_ids("a.txt")
        b_before = index.chunks(index.chunk_ids("sub/b.md"))

    again = _index(docs, path, encoder)           # nothing changed: nothing read twice, nothing embedded
    assert (again.unchanged, again.embedded, encoder.seen, again.chunks) == (3, 0, [], first.chunks)

    (docs / "new.txt").write_text("keys in the coat pocket")                     # add
    (docs / "a.txt").write_text(CAT * 6 + "the cat ran to the station\n")       # change: append a line
    (docs / "d.jsonl").unlink()                                                  # delete
    report = _index(docs, path, encoder)
    assert (report.added, report.changed, report.removed, report.unchanged) == \
        (["new.txt"], ["a.txt"], ["d.jsonl"], 1)
    assert "keys in the coat pocket" in encoder.seen
    assert report.reused > 0 and report.embedded == len(set(encoder.seen))     # a.txt's old chunks kept
    assert all("station" in t or t == "keys in the coat pocket" for t in encoder.seen), encoder.seen
    with RagIndex.open(path) as index:
        assert index.chunk_ids("d.jsonl") == [] and "d.jsonl" not in index.files()
        assert not set(index.chunk_ids("a.txt")) & set(a_ids)                   # new ids, old ones dropped
        assert index.chunks(index.chunk_ids("sub/b.md")) == b_before           # untouched file, same records
        assert len(index) == report.chunks == index._faiss().ntotal
        texts = [r.text for r in index.chunks(index.chunk_ids("a.txt"))]
        assert texts[-1].endswith("the cat ran to the station")
    assert sorted(p.name for p in path.iterdir()) == ["bm25-2", "chunks.sqlite", "vectors-2.faiss"]


def test_a_file_that_is_not_utf8_is_named_skipped_and_the_rest_indexed(docs, tmp_path, encoder):
    (docs / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"skipped latin1.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        report = _index(docs, tmp_path / "idx", encoder)
    assert report.skipped == ["skipped latin1.txt: not UTF-8 text (byte 0xe9 at offset 3)"]
    assert sorted(report.added) == ["a.txt", "d.jsonl", "sub/b.md"] and report.chunks > 0


def test_a_jsonl_line_without_text_is_named_and_skipped(docs, tmp_path, encoder):
    (docs / "more.jsonl").write_text('{"id": 1, "text": "pizza"}\nnot json\n{"id": 3, "score": 2}\n')
    with pytest.warns(UserWarning) as caught:
        report = _index(docs, tmp_path / "idx", encoder)
    assert [str(w.message) for w in caught] == [
        "skipped more.jsonl line 2: not JSON (Expecting value)",
        "skipped more.jsonl line 3: no text field (one of text, content, dialogue, body, document, passage)"]
    assert "more.jsonl" in report.added


def test_a_missing_or_empty_documents_folder_is_a_clear_error(tmp_path, encoder):
    with pytest.raises(FileNotFoundError, match="no documents folder or file at .*nowhere"):
        _index(tmp_path / "nowhere", tmp_path / "idx", encoder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="the documents folder .*empty' is empty"):
        _index(tmp_path / "empty", tmp_path / "idx", encoder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "table.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"has no \.txt, \.md, \.jsonl files"):
        _index(tmp_path / "other", tmp_path / "idx", encoder)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no document in .* could be read: skipped x.txt"):
        _index(tmp_path / "bad", tmp_path / "idx", encoder)
    assert not (tmp_path / "idx").exists()


def test_an_index_built_with_another_embedder_is_refused(docs, tmp_path, encoder):
    _index(docs, tmp_path / "idx", encoder)
    other = SentenceEncoder(save_tiny_encoder(tmp_path / "other-encoder", hidden_size=16))
    with pytest.raises(ValueError, match=r"built with the embedder .*, not .*other-encoder"):
        index_documents(docs, tmp_path / "idx", embedder=other, chunk_tokens=12, chunk_overlap=3, progress=False)
    with pytest.raises(ValueError, match=r"\(32 dimensions\), not .*other-encoder' \(16 dimensions\)"):
        RagIndex.open(tmp_path / "idx", other)
    from gencycle.integrate import Retriever
    with pytest.raises(ValueError, match="was built with the embedder"):
        Retriever(tmp_path / "idx", embedder=other)
    report = index_documents(docs, tmp_path / "idx", embedder=other, chunk_tokens=12, chunk_overlap=3,
                             progress=False, rebuild=True)
    assert report.embedded > 0 and RagIndex.open(tmp_path / "idx").meta["dimension"] == 16


def test_other_chunk_sizes_need_a_rebuild(docs, tmp_path, encoder):
    _index(docs, tmp_path / "idx", encoder)
    with pytest.raises(ValueError, match="built with chunk_tokens=12 and chunk_overlap=3, not 20 and 3"):
        _index(docs, tmp_path / "idx", encoder, chunk_tokens=20)
    assert _index(docs, tmp_path / "idx", encoder, chunk_tokens=20, rebuild=True).embedded > 0


def test_chunks_longer_than_the_encoder_reads_are_refused(docs, tmp_path, encoder):
    with pytest.raises(ValueError, match=r"chunk_tokens 200 is more than the embedder reads per text \(126"):
        _index(docs, tmp_path / "idx", encoder, chunk_tokens=200)


def test_a_folder_that_is_not_an_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no RAG index at .*: it does not exist"):
        RagIndex.open(tmp_path / "none")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "chunks.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="is not a gencycle RAG index"):
        RagIndex.open(tmp_path / "junk")


def test_an_interrupted_commit_leaves_the_previous_index_whole(docs, tmp_path, encoder, monkeypatch):
    path = tmp_path / "idx"
    before = _index(docs, path, encoder).chunks
    (docs / "new.txt").write_text("keys in the coat pocket")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RagIndex, "_build_bm25", crash)   # dies after writing vectors-2, before the switch
    with pytest.raises(KeyboardInterrupt):
        _index(docs, path, encoder)
    monkeypatch.undo()
    with RagIndex.open(path) as index:
        assert len(index) == before and index.meta["generation"] == 1 and "new.txt" not in index.files()
        assert index._faiss().ntotal == before
    assert _index(docs, path, encoder).added == ["new.txt"]
    assert sorted(p.name for p in path.iterdir()) == ["bm25-2", "chunks.sqlite", "vectors-2.faiss"]


def test_an_index_that_crashed_before_its_first_commit_is_built_on(docs, tmp_path, encoder, monkeypatch):
    monkeypatch.setattr(RagIndex, "_build_bm25", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _index(docs, tmp_path / "idx", encoder)
    monkeypatch.undo()
    with RagIndex.open(tmp_path / "idx") as index:
        assert (len(index), index.meta["generation"]) == (0, 0)
    report = _index(docs, tmp_path / "idx", encoder)
    assert sorted(report.added) == ["a.txt", "d.jsonl", "sub/b.md"] and report.chunks > 0


def test_the_sqlite_records_are_plain_tables(docs, tmp_path, encoder):
    _index(docs, tmp_path / "idx", encoder)
    db = sqlite3.connect(tmp_path / "idx" / "chunks.sqlite")
    columns = [row[1] for row in db.execute("PRAGMA table_info(chunks)")]
    assert columns == ["id", "source", "record", "start_line", "end_line", "start_char", "end_char", "sha256", "text"]
    assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 3


# ------------------------------------------------------------------ HNSW past a threshold
def _vector_index(path, vectors_by_file):
    from gencycle.integrate.chunking import Chunk
    index = RagIndex.create(path, embedder="random", dimension=16, chunk_tokens=8, chunk_overlap=0)
    for source, vectors in vectors_by_file.items():
        chunks = [Chunk(source, None, f"{source} {i}", 0, 1, i + 1, i + 1, 1) for i in range(len(vectors))]
        index.replace_file(source, source, chunks, vectors)
    return index


def _unit(rng, n, d=16):
    v = rng.standard_normal((n, d)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_past_the_threshold_dense_search_walks_an_hnsw_graph_with_high_recall(tmp_path):
    rng = np.random.default_rng(0)
    data = {"a": _unit(rng, 1500), "b": _unit(rng, 1500)}
    index = _vector_index(tmp_path / "idx", data)
    index.commit(hnsw_threshold=2000)
    assert index.has_hnsw and sorted(p.name for p in tmp_path.glob("idx/*.faiss")) == ["hnsw-1.faiss",
                                                                                         "vectors-1.faiss"]
    index.close()
    index = RagIndex.open(tmp_path / "idx")
    ids = index.chunk_ids("a") + index.chunk_ids("b")
    matrix = np.concatenate([data["a"], data["b"]])
    queries, found, exact_equal = _unit(rng, 100), 0, True
    for q in queries:
        truth = [ids[j] for j in np.argsort(-(matrix @ q), kind="stable")[:10]]
        approx = [i for i, _ in index.dense(q, 10)]
        exact = [i for i, _ in index.dense(q, 10, exact=True)]
        exact_equal &= exact == truth
        found += len(set(approx) & set(truth))
        assert index.dense(q, 1)[0][1] == pytest.approx(float(matrix[ids.index(index.dense(q, 1)[0][0])] @ q), abs=1e-5)
    assert exact_equal and found / 1000 >= 0.95  # recall@10 of the graph against the exact scan
    assert index._graph() is not None
    # a change makes the graph stale: dense search scans the exact index until the commit rebuilds it
    index.remove_file("b")
    assert index._graph() is None and len(index.dense(queries[0], 5)) == 5
    index.commit(hnsw_threshold=2000)  # 1500 chunks left: under the threshold, the graph goes
    assert not index.has_hnsw and not list(tmp_path.glob("idx/hnsw-*.faiss"))
    index.commit(hnsw_threshold=1000)  # nothing changed, but the threshold now asks for a graph
    assert index.has_hnsw and index.meta["generation"] == 3
    index.close()


def test_index_documents_builds_the_graph_from_its_threshold(docs, tmp_path, encoder):
    _index(docs, tmp_path / "idx", encoder)
    assert not RagIndex.open(tmp_path / "idx").has_hnsw
    _index(docs, tmp_path / "idx", encoder, hnsw_threshold=1)
    with RagIndex.open(tmp_path / "idx") as index:
        assert index.has_hnsw
    with pytest.raises(ValueError, match="hnsw_threshold must be an integer >= 1"):
        IndexConfig(hnsw_threshold=0)


def test_documents_without_a_bm25_term_are_indexed_and_found_by_dense_search(tmp_path, encoder):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("the a of\n")  # stop words and one letter: no BM25 term
    _index(folder, tmp_path / "idx", encoder)
    from gencycle.integrate import Retriever
    retriever = Retriever(tmp_path / "idx", embedder=encoder)
    assert retriever.search("the a of", mode="bm25") == []
    assert [h.chunk.source for h in retriever.search("the a of", mode="dense")] == ["a.txt"]
    assert [h.chunk.source for h in retriever.search("the a of", mode="hybrid")] == ["a.txt"]
    retriever.close()
