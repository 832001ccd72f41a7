"""`gencycle rag index DOCS --index PATH`, `gencycle rag search PATH QUERY`, `gencycle rag ask PATH QUESTION`.

The options come from `gencycle.integrate.IndexConfig`, `SearchConfig` and `RagConfig` by
`cli.options`, so the commands and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse

from ..assets import DEFAULT_MODEL
from .generate import utf8
from .options import add_config_arguments, config_from_args, number

INDEX = """\
Index DOCS (a folder of .txt / .md / .jsonl files, one such file, or `shipped`: the shipped
chitchat dialogues) into the index folder --index: chunks of --chunk-tokens tokens that overlap
by --chunk-overlap, embedded in batches by --embedder (default: the packaged all-MiniLM-L6-v2),
stored with faiss (vectors) and sqlite3 (chunk records), plus a BM25 index. Run it again after
the documents change: only new and changed files are embedded, deleted files are dropped.
Files that are not UTF-8 are named and skipped.
"""

SEARCH = """\
The best chunks of the index for QUERY, with their scores and where they are (path, line range,
JSONL record): dense (cosine of embeddings), bm25, or hybrid (both: min-max scaled scores
averaged by default, --fusion rrf for reciprocal rank fusion).
"""

ASK = """\
Answer QUESTION from the index: the best passages go into the prompt as numbered sources (the
lowest-ranked are dropped when the prompt would not fit the model's context window, with a
note), the model answers greedily and cites them as [n], and the answer is printed with the
sources it cites (path and line range).
"""


def register(subparsers) -> None:
    from ..integrate.indexing import IndexConfig
    from ..integrate.rag import RagConfig
    from ..integrate.retrieval import SearchConfig
    group = subparsers.add_parser("rag", help="retrieval-augmented generation: index documents, search, ask")
    commands = group.add_subparsers(dest="rag_command", required=True)
    index = commands.add_parser("index", help="index a folder of documents (again: only what changed)",
                                description=INDEX, formatter_class=argparse.RawDescriptionHelpFormatter)
    index.add_argument("documents", metavar="DOCS", help="folder, .txt / .md / .jsonl file, or 'shipped'")
    index.add_argument("--index", required=True, dest="index_path", metavar="PATH", help="the index folder")
    add_config_arguments(index, IndexConfig())
    index.set_defaults(func=run_index)

    search = commands.add_parser("search", help="the best chunks for a query", description=SEARCH,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    search.add_argument("index_path", metavar="PATH", help="the index folder")
    search.add_argument("query", help="what to look for")
    add_config_arguments(search, SearchConfig())
    search.add_argument("--chars", type=number(int, minimum=4), default=160,
                        help="characters of each chunk to show, >= 4 (default: 160)")
    search.set_defaults(func=run_search)

    ask = commands.add_parser("ask", help="answer a question from the index, citing its sources",
                              description=ASK, formatter_class=argparse.RawDescriptionHelpFormatter)
    ask.add_argument("index_path", metavar="PATH", help="the index folder")
    ask.add_argument("question", help="the question")
    ask.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"model folder, .gguf file or packaged name (default: {DEFAULT_MODEL})")
    ask.add_argument("--device", help="cpu, cuda, ... (default: the GPU when there is one)")
    ask.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights dtype (default: fp32)")
    add_config_arguments(ask, RagConfig())
    ask.add_argument("--show-prompt", action="store_true", help="print the prompt the model read (default: off)")
    ask.set_defaults(func=run_ask)


def _rag_dependencies() -> None:
    try:
        import bm25s  # noqa: F401
        import faiss  # noqa: F401
    except ImportError:
        raise ValueError("gencycle rag needs faiss-cpu and bm25s: pip install 'gencycle[rag]'") from None


def run_index(args) -> None:
    from ..integrate.indexing import IndexConfig, index_documents
    _rag_dependencies()
    report = index_documents(args.documents, args.index_path, config_from_args(IndexConfig(), args))
    print(report.summary())


def run_search(args) -> None:
    from ..integrate.retrieval import Retriever, SearchConfig
    _rag_dependencies()
    config = config_from_args(SearchConfig(), args)
    utf8(args.query, "the query")
    retriever = Retriever(args.index_path, rrf_k=config.rrf_k, fusion=config.fusion)
    try:
        hits = retriever.search(args.query, config.top_k, config.mode)
    finally:
        retriever.close()
    if not hits:
        print("no chunk matches")
    for hit in hits:
        text = " ".join(hit.chunk.text.split())
        text = text if len(text) <= args.chars else text[:args.chars - 3] + "..."
        print(f"{hit.rank}. {hit.score:.4f}  {hit.chunk.location}\n   {text}")


def run_ask(args) -> None:
    from ..generation import LLM
    from ..integrate.rag import RagConfig, answer_question
    from ..integrate.retrieval import Retriever
    _rag_dependencies()
    config = config_from_args(RagConfig(), args)
    utf8(args.question, "the question")
    if args.device is not None:
        from ..checkpoints.devices import resolve_device
        resolve_device(args.device)  # before the index or the model is opened
    retriever = Retriever(args.index_path)
    try:
        llm = LLM.load(args.model, dtype=args.dtype, device=args.device)
        result = answer_question(llm, retriever, args.question, config)
    finally:
        retriever.close()
    if args.show_prompt:
        print(f"===== prompt ({result.prompt_tokens} tokens) =====\n{result.prompt}\n===== answer =====")
    print(result.format())
