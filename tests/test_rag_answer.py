"""RAG retrieval and answering on a tiny random encoder and decoder: retrieval order (dense, BM25,
hybrid), reciprocal rank fusion, passages, fitting the context window, citations, and the CLI."""

import pytest

from gencycle.generation import LLM
from gencycle.integrate import Retriever, SentenceEncoder, index_documents, reciprocal_rank_fusion, relative_score_fusion
from gencycle.integrate.rag import Passage, RagConfig, answer_question, citations, fit_prompt, passages
from gencycle.integrate.retrieval import Hit
from tiny_encoder import save_tiny_encoder
from tiny_llm import save_tiny_chat_model

pytest.importorskip("faiss")
pytest.importorskip("bm25s")
pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = {
    "pets.txt": "the cat sat on the mat\nthe dog ran far\n",
    "food.md": "pizza with cheese is what i like\n",
    "weather.txt": "the weather is sunny today\nno rain at the station\n",
    "keys.txt": "i lost my keys\nthey were in the coat pocket\n",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    encoder = SentenceEncoder(save_tiny_encoder(root / "encoder"))
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    index_documents(docs, root / "idx", embedder=encoder, chunk_tokens=32, chunk_overlap=4, progress=False)
    return root, encoder


@pytest.fixture(scope="module")
def retriever(built):
    root, encoder = built
    retriever = Retriever(root / "idx", embedder=encoder)
    yield retriever
    retriever.close()


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return LLM.load(save_tiny_chat_model(tmp_path_factory.mktemp("chat"), context=512))


# ------------------------------------------------------------------ retrieval
def test_rrf_sums_weight_over_k_plus_rank():
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1]], rrf_k=10))
    assert fused == pytest.approx({1: 1 / 11 + 1 / 12, 2: 1 / 12, 3: 1 / 13 + 1 / 11})
    assert [i for i, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 1]], rrf_k=10)] == [1, 3, 2]
    assert [i for i, _ in reciprocal_rank_fusion([[1, 2], [2, 1]], rrf_k=0, weights=[1, 3])] == [2, 1]
    with pytest.raises(ValueError, match="2 weights for 1 rankings"):
        reciprocal_rank_fusion([[1]], weights=[1, 2])


def test_relative_score_fusion_averages_min_max_scaled_scores():
    dense = [(1, 0.9), (2, 0.8), (3, 0.5)]        # scaled: 1 -> 1, 2 -> 0.75, 3 -> 0
    lexical = [(3, 12.0), (4, 4.0), (1, 2.0)]     # scaled: 3 -> 1, 4 -> 0.2, 1 -> 0
    fused = relative_score_fusion([dense, lexical])
    assert dict(fused) == pytest.approx({1: 0.5, 2: 0.375, 3: 0.5, 4: 0.1})
    assert [i for i, _ in fused] == [1, 3, 2, 4]  # 1 and 3 tie: first seen first
    weighted = dict(relative_score_fusion([dense, lexical], weights=[1, 3]))  # a weighted mean
    assert weighted == pytest.approx({1: 0.25, 2: 0.1875, 3: 0.75, 4: 0.15})
    # the margins count, not only the places: dense puts 1 barely ahead of 3, BM25 puts 3 far
    # ahead of 1; RRF sees 1st + 2nd for both (a tie, first seen wins), relative fusion picks 3
    dense, lexical = [(1, 0.90), (3, 0.89), (2, 0.50)], [(3, 30.0), (1, 3.0), (4, 2.0)]
    assert dict(relative_score_fusion([dense, lexical])) == pytest.approx(
        {1: (1 + 1 / 28) / 2, 3: (0.975 + 1) / 2, 2: 0.0, 4: 0.0})
    assert relative_score_fusion([dense, lexical])[0][0] == 3
    assert reciprocal_rank_fusion([[1, 3, 2], [3, 1, 4]], rrf_k=60)[0][0] == 1
    # the scale of either method does not matter
    scaled = [(i, 100 * s - 7) for i, s in lexical]
    same, fused = relative_score_fusion([dense, scaled]), relative_score_fusion([dense, lexical])
    assert [i for i, _ in same] == [i for i, _ in fused] and dict(same) == pytest.approx(dict(fused))


def test_relative_score_fusion_edges():
    assert relative_score_fusion([[], []]) == []
    assert relative_score_fusion([[(5, 0.3)], []]) == [(5, 0.5)]           # one result: scaled to 1
    assert dict(relative_score_fusion([[(1, 2.0), (2, 2.0)], [(2, 1.0)]])) == pytest.approx({1: 0.5, 2: 1.0})
    with pytest.raises(ValueError, match="1 weights for 2 score lists"):
        relative_score_fusion([[], []], weights=[1])
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        relative_score_fusion([[(1, 1.0)], [(1, 1.0)]], weights=[0, 0])
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        relative_score_fusion([[(1, 1.0)], [(1, 1.0)]], weights=[-1, 2])


def test_dense_ranks_the_chunk_identical_to_the_query_first(retriever):
    for text, source in [("the weather is sunny today\nno rain at the station", "weather.txt"),
                         ("i lost my keys\nthey were in the coat pocket", "keys.txt")]:
        hits = retriever.search(text, k=4, mode="dense")
        assert hits[0].chunk.source == source and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.rank for h in hits] == [1, 2, 3, 4]
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_bm25_ranks_by_shared_terms_and_returns_only_matches(retriever):
    hits = retriever.search("pizza cheese", k=4, mode="bm25")
    assert [h.chunk.source for h in hits] == ["food.md"] and hits[0].score > 0
    hits = retriever.search("the station in the rain", k=4, mode="bm25")
    assert hits[0].chunk.source == "weather.txt"
    assert retriever.search("zebra", k=3, mode="bm25") == []


def test_hybrid_fuses_both_rankings(built, retriever):
    query = "pizza with cheese is what i like"
    dense = retriever.ranked(query, 50, "dense")
    lexical = retriever.ranked(query, 50, "bm25")
    expected = relative_score_fusion([dense, lexical])[:3]
    hits = retriever.search(query, k=3, mode="hybrid")
    assert retriever.fusion == "relative"
    assert [(h.chunk.id, h.score) for h in hits] == [(i, pytest.approx(s)) for i, s in expected]
    assert hits[0].chunk.source == "food.md" and hits[0].mode == "hybrid" and hits[0].score <= 1.0
    root, encoder = built
    rrf = Retriever(retriever.index, embedder=encoder, fusion="rrf")
    expected = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]], 60.0)[:3]
    hits = rrf.search(query, k=3, mode="hybrid")
    assert [(h.chunk.id, h.score) for h in hits] == [(i, pytest.approx(s)) for i, s in expected]
    few = Retriever(retriever.index, embedder=encoder, candidates=1)  # candidates: each method's depth
    assert [h.chunk.id for h in few.search(query, k=1)] == [relative_score_fusion([dense[:1], lexical[:1]])[0][0]]


def test_bad_searches_are_refused(retriever):
    with pytest.raises(ValueError, match="mode must be one of dense, bm25, hybrid"):
        retriever.search("cat", mode="fuzzy")
    with pytest.raises(ValueError, match="the query is empty"):
        retriever.search("  ")
    with pytest.raises(ValueError, match="k must be >= 1"):
        retriever.search("cat", k=0)
    with pytest.raises(ValueError, match="fusion must be one of relative, rrf"):
        Retriever(retriever.index, fusion="max")
    with pytest.raises(ValueError, match="candidates must be an integer >= 1"):
        Retriever(retriever.index, candidates=0)


# ------------------------------------------------------------------ passages, the prompt, citations
def _passage(rank, start, end, text, source="a.txt", record=None):
    return Passage(source, record, 1, 1, start, end, text, rank, 1.0 / rank)


def test_overlapping_chunks_of_one_document_merge_into_one_passage(retriever):
    a, b = _passage(2, 0, 10, "0123456789"), _passage(1, 6, 14, "6789abcd")
    merged = a.merge(b)
    assert (merged.text, merged.start_char, merged.end_char, merged.rank) == ("0123456789abcd", 0, 14, 1)
    assert not a.overlaps(_passage(3, 0, 10, "0123456789", source="b.txt"))
    assert not a.overlaps(_passage(3, 10, 12, "ab"))  # touching is not overlapping
    hits = retriever.search("the cat sat on the mat", k=4, mode="dense")
    assert [p.rank for p in passages(hits)] == [1, 2, 3, 4]  # different files: nothing merges


def _hits(retriever, k=4):
    return passages(retriever.search("the weather is sunny today", k=k, mode="dense"))


def test_the_prompt_keeps_the_best_passages_that_fit_and_drops_the_rest(retriever, llm):
    found = _hits(retriever)
    full, used, kept, dropped = fit_prompt("is it sunny?", found, llm.tokenizer, budget=10_000)
    assert (kept, dropped) == (found, [])
    for n, p in enumerate(found, 1):
        assert f"[{n}] {p.location}\n{p.text.strip()}" in full
    budget = used - 1  # one token short of all four passages
    prompt, used, kept, dropped = fit_prompt("is it sunny?", found, llm.tokenizer, budget)
    assert used <= budget and len(llm.tokenizer.encode(prompt, add_special_tokens=False)) == used
    assert kept == found[:len(kept)] and dropped == found[len(kept):] and 0 < len(kept) < 4
    assert "[4]" not in prompt


def test_a_question_longer_than_the_context_is_refused_with_its_size(retriever, llm):
    question = "is it sunny? " * 200
    with pytest.raises(ValueError, match=r"the question is too long: \d+ tokens, and the prompt without any passage "
                                         r"needs \d+ tokens, more than the 100 the context window leaves"):
        fit_prompt(question, _hits(retriever), llm.tokenizer, budget=100)
    with pytest.raises(ValueError, match="the question is too long"):
        answer_question(llm, retriever, question, top_k=2)


def test_citations_are_found_and_unknown_numbers_flagged():
    assert citations("Paris [2] is big [1, 3][2] and old [9].", 3) == ([2, 1, 3], [9])
    assert citations("no sources here", 3) == ([], [])


def test_answer_fits_the_window_and_reports_dropped_passages(retriever, llm):
    window = 512
    everything = answer_question(llm, retriever, "is the weather sunny?", RagConfig(top_k=4, max_new_tokens=8))
    assert len(everything.sources) == 4 and everything.dropped == []
    assert everything.answer.startswith("According to source [")
    budget = everything.prompt_tokens - 2 + 8
    result = answer_question(llm, retriever, "is the weather sunny?", top_k=4, max_new_tokens=8,
                             context_tokens=budget)
    assert result.prompt_tokens + 8 <= budget <= window and 0 < len(result.sources) < 4
    assert [p.rank for p in result.sources + result.dropped] == [p.rank for p in everything.sources]
    ranks = ", ".join(str(p.rank) for p in result.dropped)
    assert f"dropped {len(result.dropped)} of 4 passages (retrieval rank {ranks}) to fit the context window " \
           f"({budget} tokens, 8 of them kept for the answer)" in result.notes
    text = result.format()
    assert f"note: {result.notes[0]}" in text
    cited = set(result.cited)
    for n, p in enumerate(result.sources, 1):   # every source is listed with its path and line range
        assert f"  [{n}] {p.location}" in text and (n in cited) == (f"[{n}]" in result.answer)


def test_the_answer_lists_the_sources_it_cites_first():
    hit = Passage("notes/a.md", None, 3, 17, 0, 5, "hello", 1, 0.5)
    other = Passage("d.jsonl", "x2", 12, 12, 0, 5, "bye", 2, 0.4)
    from gencycle.integrate.rag import RagAnswer
    text = RagAnswer("q", "It is so [2].", [hit, other], [2]).format()
    assert text == ("It is so [2].\n\nSources cited:\n  [2] d.jsonl:12 (x2)\nRetrieved, not cited:\n"
                    "  [1] notes/a.md:3-17")


def test_no_answer_prefix_leaves_the_reply_to_the_model(retriever, llm):
    result = answer_question(llm, retriever, "is it sunny?", top_k=1, max_new_tokens=4, answer_prefix="")
    assert not result.prompt.endswith("[") and "According" not in result.prompt


# ------------------------------------------------------------------ the CLI
def _cli(*argv):
    from gencycle.cli import main
    return main([str(a) for a in argv])


def test_cli_index_search_and_ask(built, tmp_path, llm, capsys):
    root, encoder = built
    assert _cli("rag", "index", root / "docs", "--index", tmp_path / "idx", "--embedder", root / "encoder",
                "--chunk-tokens", 32, "--chunk-overlap", 4, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "4 chunks from 4 files" in out and "4 added" in out
    assert _cli("rag", "index", root / "docs", "--index", tmp_path / "idx", "--embedder", root / "encoder",
                "--chunk-tokens", 32, "--chunk-overlap", 4, "--no-progress") == 0
    assert "4 unchanged; 0 chunks embedded" in capsys.readouterr().out
    assert _cli("rag", "search", tmp_path / "idx", "pizza cheese", "--mode", "bm25", "--top-k", 2) == 0
    out = capsys.readouterr().out
    assert out.startswith("1. ") and "food.md:1" in out and "pizza with cheese" in out
    query = DOCS["food.md"].strip()  # both methods rank its chunk first
    for flags, score in [([], 1.0), (["--fusion", "rrf"], 2 / 61), (["--fusion", "rrf", "--rrf-k", 0], 2.0)]:
        assert _cli("rag", "search", tmp_path / "idx", query, "--top-k", 1, *flags) == 0
        assert capsys.readouterr().out.startswith(f"1. {score:.4f}  food.md:1")
    assert _cli("rag", "search", tmp_path / "idx", query, "--fusion", "max") == 2
    assert "relative" in capsys.readouterr().err
    model = save_tiny_chat_model(tmp_path / "chat", context=512)
    assert _cli("rag", "ask", tmp_path / "idx", "is it sunny?", "--model", model, "--top-k", 2,
                "--max-new-tokens", 6, "--show-prompt") == 0
    out = capsys.readouterr().out
    assert "===== prompt (" in out and "Question: is it sunny?" in out
    assert ("Sources cited:" in out) or ("The answer cites no source." in out)
    assert ".txt:" in out or ".md:" in out


def test_cli_bad_input_is_one_line_with_exit_status_2(built, tmp_path, capsys):
    root, _ = built
    assert _cli("rag", "index", tmp_path / "missing", "--index", tmp_path / "idx") == 2
    assert "error: no documents folder or file at" in capsys.readouterr().err
    assert _cli("rag", "search", tmp_path / "nothing", "cat") == 2
    assert "error: no RAG index at" in capsys.readouterr().err
    other = save_tiny_encoder(tmp_path / "other", hidden_size=16)
    assert _cli("rag", "index", root / "docs", "--index", root / "idx", "--embedder", other,
                "--chunk-tokens", 32, "--chunk-overlap", 4) == 2
    err = capsys.readouterr().err
    assert "was built with the embedder" in err and "--rebuild" in err and "Traceback" not in err


@pytest.mark.slow
def test_rag_ask_on_the_shipped_dialogues_cites_the_right_one(tmp_path, capsys):
    """The packaged MiniLM indexes the 330 shipped dialogues; the packaged SmolLM2 answers a question
    about one of them (chitchat_276: one speaker would build the wall) and cites it."""
    from gencycle.assets import resolve
    try:
        resolve("smollm2-135m-instruct"), resolve("all-minilm-l6-v2")
    except FileNotFoundError:
        pytest.skip("the packaged models are not installed")
    assert _cli("rag", "index", "shipped", "--index", tmp_path / "idx", "--no-progress") == 0
    assert "chunks from 1 files" in capsys.readouterr().out
    assert _cli("rag", "ask", tmp_path / "idx", "Why does one speaker want to build the wall?") == 0
    out = capsys.readouterr().out
    cited = out.split("Sources cited:")[1].split("Retrieved, not cited:")[0]
    assert "dialogues.jsonl:276 (chitchat_276)" in cited, out
