"""The ReAct loop (Yao et al., 2022): the model thinks, calls a tool, reads what it returned, repeats.

    result = react("What is 17 * 23 + 4?", default_tools(), LLMGenerate(llm))
    print(result.format())                 # the whole transcript, and why it stopped

The model sees the tools and the format, then writes

    Thought: ...
    Action: calculator
    Action Input: {"expression": "17 * 23 + 4"}

and generation stops at "Observation:" (a stop sequence), which hands control back to the loop:
the loop runs the tool and writes the observation itself, then the model goes on. It ends at
"Final Answer: ...", or after `max_steps` model calls. A tool name the model made up, or an
Action Input that does not fit the tool, comes back as an observation that says what is wrong
(the tools that exist; the JSON the tool takes), so the model can correct itself.

`generate` is any callable (prompt, stop sequences) -> completion text: `LLMGenerate(llm)` for a
gencycle model (its chat template, if any, around the instructions and question), or your own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import OptionError
from .tools import Tool, ToolInputError

Generate = Callable[[str, Sequence[str]], str]
STOP = ("Observation:",)


@dataclass
class AgentConfig:
    """The ReAct loop of `gencycle agent`."""

    tools: tuple[str, ...] = ("calculator", "python")
    """tools the model may call: calculator, python (the sandbox), search (needs --index)"""
    max_steps: int = 6
    """model calls at most before the loop stops without an answer, >= 1"""
    max_new_tokens: int = 192
    """tokens per model call at most, >= 1"""

    def __post_init__(self):
        self.tools = (self.tools,) if isinstance(self.tools, str) else tuple(self.tools)
        if not self.tools or not all(isinstance(t, str) and t.strip() for t in self.tools):
            raise OptionError("tools", "must name one tool or more (calculator, python, search)", self.tools)
        for name in ("max_steps", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(name, "must be an integer >= 1", value)

INSTRUCTIONS = """Answer the question as well as you can. You have these tools:

{tools}

Use this format:

Question: the question to answer
Thought: what to do next
Action: the tool to use, one of [{names}]
Action Input: the tool's input, a JSON object of its arguments
Observation: the tool's result
... (Thought, Action, Action Input and Observation can repeat)
Thought: I now know the answer
Final Answer: the answer to the question"""
# A worked example, shown when the calculator is among the tools: with it SmolLM2-135M writes
# "Action: calculator" and a JSON Action Input; without it, it wrote its arithmetic as the tool name.
EXAMPLE = """

Example:

Question: What is 3 * (4 + 5)?
Thought: I should use the calculator.
Action: calculator
Action Input: {"expression": "3 * (4 + 5)"}
Observation: 27
Thought: I now know the answer.
Final Answer: 27"""


@dataclass
class Step:
    """One model call and what the loop did with it. observation: the tool's result, or the loop's
    message when the step could not run a tool; None for the step that gave the final answer."""
    text: str
    thought: str = ""
    action: str | None = None
    action_input: str | None = None
    observation: str | None = None


@dataclass
class ReActResult:
    """answer: the Final Answer (None when the loop stopped without one); stopped: "answer",
    "max_steps" or "context" (the prompt outgrew the model's context window: `error` says so)."""
    question: str
    answer: str | None
    steps: list[Step]
    stopped: str
    transcript: str
    prompt: str = ""
    error: str = ""
    tool_calls: list[str] = field(default_factory=list)

    def format(self) -> str:
        why = {"answer": f"final answer after {len(self.steps)} steps",
               "max_steps": f"stopped: {len(self.steps)} steps (the most allowed) without a final answer",
               "context": f"stopped: {self.error}"}[self.stopped]
        return f"{self.transcript.rstrip()}\n\n({why})"


def instructions(tools: Sequence[Tool]) -> str:
    """The tools and the format (and the worked example when there is a calculator)."""
    listing = "\n".join(f"{t.signature()}: {t.description}" for t in tools)
    text = INSTRUCTIONS.format(tools=listing, names=", ".join(t.name for t in tools))
    return text + (EXAMPLE if any(t.name == "calculator" for t in tools) else "")


def plain_start(instructions_text: str, question: str) -> str:
    """The prompt's head for a model without a chat template; the scratchpad follows it."""
    return f"{instructions_text}\n\nQuestion: {question}\n"


_ACTION = re.compile(r"Action\s*:[ \t]*(?P<name>[^\n]*)(?:\n\s*Action\s*Input\s*:[ \t]*(?P<input>.*))?",
                     re.DOTALL | re.IGNORECASE)
_FINAL = re.compile(r"Final\s*Answer\s*:\s*(?P<answer>.*)", re.DOTALL | re.IGNORECASE)


def parse_step(text: str) -> Step:
    """A model output as thought, Action and Action Input (the first action; what follows it is
    ignored). Without an action, the whole text is the thought (`final_answer` finds an answer)."""
    action, final = _ACTION.search(text), _FINAL.search(text)
    if action and (not final or action.start() < final.start()):
        name = action.group("name").strip().strip("`'\"[]*").strip()
        given = action.group("input")
        if given is not None:
            given = re.split(r"\n\s*(?:Thought|Action)\s*:", given, maxsplit=1)[0].strip()
        return Step(text, text[:action.start()].strip(), name or None, given)
    return Step(text, text[:final.start()].strip() if final else text.strip())


def final_answer(text: str) -> str | None:
    """What follows "Final Answer:", up to a blank line."""
    found = _FINAL.search(text)
    return found.group("answer").strip().split("\n\n")[0].strip() if found else None


def react(question: str, tools: Sequence[Tool], generate: Generate, max_steps: int = 6,
          start: Callable[[str, str], str] | None = None, max_observation_chars: int = 1500) -> ReActResult:
    """Run the loop. start(instructions, question) -> the prompt's head (default: plain text; an
    `LLMGenerate` brings its own for chat models). Every model call counts as a step."""
    if not question.strip():
        raise ValueError("the question is empty")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    by_name = {t.name: t for t in tools}
    if len(by_name) != len(tools):
        raise ValueError("two tools have the same name")
    if start is None:
        start = getattr(generate, "start", plain_start)
    head = start(instructions(tools), question)
    scratchpad = "Thought:"
    transcript = f"Question: {question}\n"
    steps: list[Step] = []
    calls: list[str] = []
    while len(steps) < max_steps:
        try:
            text = generate(head + scratchpad, STOP)
        except ValueError as error:  # the prompt no longer fits the model's context
            return ReActResult(question, None, steps, "context", transcript + scratchpad, head, str(error), calls)
        text = _cut_at_stop(text, STOP)
        answer = final_answer(text)
        step = parse_step(text)
        steps.append(step)
        if step.action is None and answer is not None:
            scratchpad += f" {text.strip()}\n"
            return ReActResult(question, answer, steps, "answer", transcript + scratchpad, head, "", calls)
        step.observation = _observe(step, by_name, calls)[:max_observation_chars]
        scratchpad += f" {text.strip()}\nObservation: {step.observation}\nThought:"
    return ReActResult(question, None, steps, "max_steps", transcript + scratchpad.removesuffix("Thought:"),
                       head, "", calls)


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """What a generator that honours the stop sequences returns (a custom one might not)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _observe(step: Step, tools: dict[str, Tool], calls: list[str]) -> str:
    names = ", ".join(tools)
    if step.action is None:
        return ("no Action in that step: write 'Action: <tool name>' and 'Action Input: <JSON object>', "
                "or 'Final Answer: <answer>'")
    tool = tools.get(step.action)
    if tool is None:
        return f"there is no tool named {step.action!r}; the tools are: {names}"
    if step.action_input is None or not step.action_input:
        return f"no Action Input for {tool.name}: write 'Action Input: ' and its input on the next line"
    calls.append(tool.name)
    try:
        return tool.call(step.action_input)
    except ToolInputError as error:
        return f"error: {error}"
    except Exception as error:  # a failing tool is the model's observation, not the loop's end
        return f"error: {tool.name} failed: {type(error).__name__}: {error}"


class LLMGenerate:
    """A gencycle `LLM` as the loop's `generate`: greedy (or with `overrides`), up to max_new_tokens,
    stopping at the loop's stop sequences. With a chat template, the instructions are the system
    message and the question the user message; the scratchpad is the assistant's reply."""

    def __init__(self, llm, max_new_tokens: int = 192, **overrides):
        self.llm, self.max_new_tokens = llm, max_new_tokens
        self.overrides = {"do_sample": False, **overrides}
        self.chat = bool(llm.tokenizer.chat_template)

    def start(self, instructions_text: str, question: str) -> str:
        if not self.chat:
            return plain_start(instructions_text, question)
        return self.llm.format_chat([{"role": "system", "content": instructions_text},
                                     {"role": "user", "content": f"Question: {question}"}])

    def __call__(self, prompt: str, stop: Sequence[str]) -> str:
        from ..generation import generate
        llm = self.llm
        config = llm.make_config(max_new_tokens=self.max_new_tokens, stop=tuple(stop), **self.overrides)
        ids, mask = llm.encode([prompt], templated=self.chat)
        window = llm.model.config.max_position_embeddings
        if ids.shape[1] >= window:
            raise ValueError(f"the transcript ({ids.shape[1]} tokens) no longer fits the model's context window "
                             f"of {window} tokens")
        out = generate(llm.model, ids, mask, config, tokenizer=llm.tokenizer)
        return llm.completions(out, ids.shape[1], config)[0]
