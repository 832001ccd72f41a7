"""Integrate: connect a model to the outside world (retrieval, tools, programs it writes).

    index_documents("notes/", "runs/notes.idx")                   # chunk, embed, store (faiss + sqlite3)
    retriever = Retriever("runs/notes.idx")                       # dense, bm25 or hybrid search
    answer_question(LLM.load(), retriever, "question").format()   # RAG: numbered sources, [n] citations
    react("question", default_tools(retriever), LLMGenerate(llm)) # ReAct over calculator, python, search
    solve_with_programs(llm, ["word problem"])                    # PAL: a program, run in the sandbox

faiss and bm25s (`pip install 'gencycle[rag]'`) are imported only when an index is used.
"""

from .chunking import Chunk, chunk_document
from .documents import Document, list_files, read_file
from .embeddings import SentenceEncoder, mean_pool
from .index import ChunkRecord, RagIndex
from .indexing import IndexConfig, IndexReport, index_documents
from .pal import PalResult, answer_directly, solve_with_programs
from .rag import Passage, RagAnswer, RagConfig, answer_question
from .react import AgentConfig, LLMGenerate, ReActResult, react
from .retrieval import Hit, Retriever, SearchConfig, reciprocal_rank_fusion, relative_score_fusion
from .sandbox import DEFAULT_ALLOWED, SandboxResult, check_program, run_python
from .tools import Tool, ToolInputError, calculate, calculator_tool, default_tools, make_tools, python_tool, search_tool

__all__ = ["AgentConfig", "Chunk", "ChunkRecord", "DEFAULT_ALLOWED", "Document", "Hit", "IndexConfig", "IndexReport",
           "LLMGenerate", "PalResult", "Passage", "RagAnswer", "RagConfig", "RagIndex", "ReActResult", "Retriever",
           "SandboxResult", "SearchConfig", "SentenceEncoder", "Tool", "ToolInputError", "answer_directly",
           "answer_question", "calculate", "calculator_tool", "check_program", "chunk_document", "default_tools",
           "index_documents", "list_files", "make_tools", "mean_pool", "python_tool", "react", "read_file",
           "reciprocal_rank_fusion", "relative_score_fusion", "run_python", "search_tool", "solve_with_programs"]
