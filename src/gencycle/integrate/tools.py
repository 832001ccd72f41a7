"""Tools a model can call: a named Python function with a description and typed arguments.

    def add(a: int, b: int) -> int:
        "Add two whole numbers."
        return a + b
    tool = Tool.from_function(add)                 # name "add", arguments a: int, b: int
    tool.call('{"a": 2, "b": 3}')                  # "5"
    tool.call("2, 3")                              # ToolInputError: Action Input must be a JSON object ...

A tool's input is the text a model wrote after "Action Input:": a JSON object of its arguments,
or, for a tool with one text argument, the text itself (or an object for it whose string lacks
its closing quote, `{"expression": "2 + 3}`, as SmolLM2-135M writes it). Wrong names, missing or mistyped
arguments and malformed JSON raise ToolInputError with a message meant for the model (the ReAct
loop hands it back as the observation). The built-in tools: `calculator` (arithmetic evaluated
over the parsed `ast`, never `eval`), `search` (over a RAG index) and `python` (the sandbox).
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import operator
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass

TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolInputError(ValueError):
    """The Action Input does not fit the tool; the message says how to fix it."""


@dataclass(frozen=True)
class Tool:
    """name: what the model writes after "Action:"; parameters: {argument: type} (str, int, float, bool)."""
    name: str
    description: str
    function: Callable[..., object]
    parameters: dict[str, type]
    required: tuple[str, ...] = ()

    @classmethod
    def from_function(cls, function: Callable, name: str | None = None, description: str | None = None) -> "Tool":
        """A tool from a function's name, docstring and annotated parameters."""
        hints = typing.get_type_hints(function)
        parameters, required = {}, []
        for param in inspect.signature(function).parameters.values():
            kind = hints.get(param.name, str)
            if kind not in TYPES:
                raise TypeError(f"tool argument {param.name!r} of {function.__name__} has type {kind!r}; "
                                f"tools take {', '.join(t.__name__ for t in TYPES)}")
            parameters[param.name] = kind
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
        doc = description or inspect.getdoc(function) or ""
        if not doc:
            raise ValueError(f"tool {name or function.__name__!r} needs a description (a docstring)")
        return cls(name or function.__name__, " ".join(doc.split()), function, parameters, tuple(required))

    def signature(self) -> str:
        """`calculator(expression: string)`: how the tool list shows it."""
        args = ", ".join(f"{n}: {TYPES[t]}" + ("" if n in self.required else " (optional)")
                         for n, t in self.parameters.items())
        return f"{self.name}({args})"

    def parse(self, text: str) -> dict:
        """The keyword arguments in an Action Input."""
        text = text.strip()
        if text.startswith("```"):
            text = text.strip("`").removeprefix("json").strip()
        single = [n for n, t in self.parameters.items() if t is str]
        if not text.startswith("{"):
            if len(self.parameters) == 1 and single:  # one text argument: the input is the text
                return {single[0]: _unquote(text)}
            example = json.dumps({n: f"<{TYPES[t]}>" for n, t in self.parameters.items()})
            raise ToolInputError(f"Action Input for {self.name} must be a JSON object like {example}")
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            loose = _LOOSE_OBJECT.match(text)  # {"expression": "17 * 23 + 4}: a closing quote missing
            if len(self.parameters) == 1 and single and loose and loose.group(1) == single[0]:
                return {single[0]: loose.group(2)}
            raise ToolInputError(f"Action Input for {self.name} is not valid JSON ({error.msg}, character "
                                 f"{error.pos}); write one JSON object on one line") from None
        if not isinstance(values, dict):
            raise ToolInputError(f"Action Input for {self.name} must be a JSON object")
        unknown = sorted(set(values) - set(self.parameters))
        if unknown:
            raise ToolInputError(f"{self.name} has no argument {', '.join(map(repr, unknown))}; its arguments: "
                                 f"{', '.join(self.parameters) or 'none'}")
        missing = [n for n in self.required if n not in values]
        if missing:
            raise ToolInputError(f"{self.name} needs the argument {', '.join(map(repr, missing))}")
        for name, value in values.items():
            values[name] = _typed(self.name, name, value, self.parameters[name])
        return values

    def call(self, text: str) -> str:
        """Run the tool on an Action Input; its result as text (ToolInputError when the input is wrong)."""
        result = self.function(**self.parse(text))
        return result if isinstance(result, str) else json.dumps(result) if isinstance(result, (list, dict)) \
            else str(result)


_LOOSE_OBJECT = re.compile(r'^\{\s*"?(\w+)"?\s*:\s*"([^"]*)"?\s*\}$', re.DOTALL)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _typed(tool: str, name: str, value, kind: type):
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ToolInputError(f"{tool}: argument {name!r} must be a {TYPES[kind]}, got {json.dumps(value)}")


# ---------------------------------------------------------------- calculator: arithmetic over the AST
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor,
              "ceil": math.ceil, "log": math.log, "log10": math.log10, "exp": math.exp, "sin": math.sin,
              "cos": math.cos, "tan": math.tan, "factorial": math.factorial}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_MAX_CHARS, _MAX_EXPONENT, _MAX_MAGNITUDE = 500, 1000, 10 ** 100


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic: numbers, + - * / // % **, parentheses, pi, e and sqrt, abs, round, min, max,
    floor, ceil, log, log10, exp, sin, cos, tan, factorial. Anything else is a ValueError naming it."""
    if len(expression) > _MAX_CHARS:
        raise ValueError(f"the expression is longer than {_MAX_CHARS} characters")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ValueError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
            result = _BINARY[type(node.op)](left, right)
            if isinstance(result, complex) or abs(result) > _MAX_MAGNITUDE:
                raise ValueError("the result is too large or not a real number")
            return result
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
                and not node.keywords:
            args = [value(a) for a in node.args]
            if node.func.id == "factorial" and (len(args) != 1 or not 0 <= args[0] <= 500):
                raise ValueError("factorial takes one whole number from 0 to 500")
            return _FUNCTIONS[node.func.id](*args)
        what = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
        raise ValueError(f"{what!r} is not allowed in a calculator expression (numbers, + - * / // % **, "
                         f"parentheses, pi, e, {', '.join(_FUNCTIONS)})")

    try:
        result = value(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except (TypeError, OverflowError) as error:
        raise ValueError(f"cannot compute {expression!r}: {error}") from None
    return int(result) if isinstance(result, float) and result.is_integer() and abs(result) < 2 ** 53 else result


def calculator_tool() -> Tool:
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression, such as (12 + 5) * 3 / 2 or sqrt(2) ** 3."""
        try:
            return str(calculate(expression))
        except ValueError as error:
            return f"error: {error}"
    return Tool.from_function(calculator)


def search_tool(retriever, k: int = 3, mode: str = "hybrid", max_chars: int = 600) -> Tool:
    """Search a RAG index (a Retriever); each passage cut at `max_chars`."""
    def search(query: str) -> str:
        """Search the documents for passages about a query; returns the best passages with where they are."""
        hits = retriever.search(query, k, mode)
        if not hits:
            return "no passage matches"
        return "\n".join(f"[{h.rank}] {h.chunk.location}: " + " ".join(h.chunk.text.split())[:max_chars]
                         for h in hits)
    return Tool.from_function(search)


def python_tool(timeout_s: float = 5.0, memory_mb: int = 256) -> Tool:
    """Run a short Python program in the sandbox (gencycle.integrate.sandbox); its printed output."""
    from .sandbox import run_python

    def python(code: str) -> str:
        """Run a short Python program (standard-library math only, no files or network) and return what it printed."""
        result = run_python(_code(code), timeout_s=timeout_s, memory_mb=memory_mb)
        if result.ok:
            return result.answer or "(the program printed nothing: print the result)"
        return f"{result.reason}: {result.error.strip()}"
    return Tool.from_function(python)


def _code(text: str) -> str:
    """A program from a tool input: the inside of a ``` fence when there is one."""
    if "```" in text:
        inside = text.split("```")[1]
        return inside.removeprefix("python").removeprefix("py").lstrip("\n")
    return text


BUILT_IN = ("calculator", "python", "search")


def default_tools(retriever=None) -> list[Tool]:
    """calculator and python, and search when a retriever is given."""
    return make_tools(("calculator", "python") + (("search",) if retriever is not None else ()), retriever)


def make_tools(names, retriever=None) -> list[Tool]:
    """The built-in tools named (calculator, python, search: the last needs a Retriever)."""
    unknown = [n for n in names if n not in BUILT_IN]
    if unknown:
        raise ValueError(f"unknown tool {', '.join(map(repr, unknown))}; the built-in tools are {', '.join(BUILT_IN)}")
    if "search" in names and retriever is None:
        raise ValueError("the search tool needs a RAG index (a Retriever; on the command line --index PATH)")
    makers = {"calculator": calculator_tool, "python": python_tool, "search": lambda: search_tool(retriever)}
    return [makers[name]() for name in dict.fromkeys(names)]
