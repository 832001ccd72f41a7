"""`gencycle agent QUESTION`: a ReAct loop over tools, or (--pal) a program-aided answer.

The loop's options come from `gencycle.integrate.AgentConfig` by `cli.options`.
"""

from __future__ import annotations

import argparse

from ..assets import DEFAULT_MODEL
from .generate import utf8
from .options import add_config_arguments, config_from_args

DESCRIPTION = """\
Answer QUESTION with a ReAct loop: the model writes Thought / Action / Action Input, the loop
runs the tool (calculator, python in the sandbox, search over a RAG index given by --index)
and writes the Observation, until the model gives a Final Answer or --max-steps model calls
are spent. The whole transcript is printed. With --pal the model instead writes one Python
program for the question; the sandbox runs it and its printed output is the answer.
"""


def register(subparsers) -> None:
    from ..integrate.react import AgentConfig
    parser = subparsers.add_parser("agent", help="answer with tools (ReAct) or with a program (--pal)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", help="the question")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model folder, .gguf file or packaged name (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the GPU when there is one)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights dtype (default: fp32)")
    parser.add_argument("--index", dest="index_path", metavar="PATH",
                        help="a RAG index folder for the search tool (gencycle rag index)")
    parser.add_argument("--pal", action="store_true",
                        help="program-aided: one program, run in the sandbox, instead of the loop (default: off)")
    add_config_arguments(parser, AgentConfig())
    parser.set_defaults(func=run)


def run(args) -> None:
    from ..generation import LLM
    from ..integrate.react import AgentConfig, LLMGenerate, react
    from ..integrate.tools import make_tools
    config = config_from_args(AgentConfig(), args)
    if args.device is not None:
        from ..checkpoints.devices import resolve_device
        resolve_device(args.device)  # before the index or the model is opened
    if not args.pal:
        make_tools([t for t in config.tools if t != "search"])  # unknown names: refused before loading anything
        if "search" in config.tools and not args.index_path:
            raise ValueError("the search tool needs a RAG index: pass --index PATH (built by gencycle rag index)")
    if args.index_path and (args.pal or "search" not in config.tools):
        import warnings
        warnings.warn("--index is read by the search tool only: ignored " + ("with --pal" if args.pal else
                      f"with --tools {' '.join(config.tools)} (add search to --tools to use it)"))
    utf8(args.question, "the question")
    if not args.question.strip():
        raise ValueError("the question is empty")
    if args.pal:
        from ..integrate.pal import solve_with_programs
        llm = LLM.load(args.model, dtype=args.dtype, device=args.device)
        result = solve_with_programs(llm, [args.question], batch_size=1, max_new_tokens=config.max_new_tokens)[0]
        print(f"Question: {args.question}\n\nProgram:\n{result.program or '(none)'}\n")
        if result.run is None:
            print("The model wrote no program.")
        elif result.run.ok:
            print(f"Answer: {result.answer}")
        else:
            print(f"The program did not give an answer ({result.run.reason}): {result.run.error.strip()}")
        return
    retriever = None
    if "search" in config.tools:
        from ..integrate.retrieval import Retriever
        retriever = Retriever(args.index_path)
    try:
        tools = make_tools(config.tools, retriever)
        llm = LLM.load(args.model, dtype=args.dtype, device=args.device)
        result = react(args.question, tools, LLMGenerate(llm, config.max_new_tokens), config.max_steps)
    finally:
        if retriever is not None:
            retriever.close()
    print(result.format())
    if result.answer is not None:
        print(f"\nAnswer: {result.answer}")
