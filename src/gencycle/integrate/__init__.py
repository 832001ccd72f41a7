"""Integrate: connect a model to the outside world (retrieval, tools, programs it writes)."""

from .sandbox import DEFAULT_ALLOWED, SandboxResult, check_program, run_python

__all__ = ["DEFAULT_ALLOWED", "SandboxResult", "check_program", "run_python"]
