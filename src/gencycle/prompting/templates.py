"""Prompt templates with named fields, and the named templates gencycle ships.

A template is Python format text: `{dialogue}` is a field, `{{` and `}}` are
literal braces. Templates ending in "-answered" add the answer field, and are
the shape a solved example takes inside a few-shot prompt.
"""

from __future__ import annotations

import string

from gencycle.errors import UserError


class UnknownTemplateError(UserError, KeyError):
    """No template of that name (a ValueError for the CLI, a KeyError as a lookup)."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingFieldError(UserError, KeyError):
    """A template was formatted without a value for one of its fields (a ValueError and a KeyError)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class PromptTemplate:
    """Text with named `{fields}`: `PromptTemplate("Q: {question}\\nA:").format(question="...")`."""

    def __init__(self, text: str, name: str = ""):
        self.text, self.name = text, name
        fields = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise ValueError(f"bad prompt template {self._label()}: {e}") from None
        for _, field_name, _, _ in parsed:
            if field_name is None:
                continue
            if not field_name.isidentifier():
                raise ValueError(f"prompt template {self._label()}: fields must be names, got {{{field_name}}}")
            if field_name not in fields:
                fields.append(field_name)
        self.fields: tuple[str, ...] = tuple(fields)

    def format(self, **values) -> str:
        """Fill every field; extra values are ignored, a missing one is an error naming it."""
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise MissingFieldError(f"prompt template {self._label()} needs {', '.join(missing)}; "
                           f"got {', '.join(values) or 'nothing'}")
        return self.text.format(**{f: values[f] for f in self.fields})

    def _label(self) -> str:
        return repr(self.name) if self.name else repr(self.text[:40])

    def __repr__(self) -> str:
        return f"PromptTemplate({self.text!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PromptTemplate) and other.text == self.text


_ALPACA = ("Below is an instruction that describes a task. "
           "Write a response that appropriately completes the request.\n\n")

TEXTS = {
    # The course's dialogue-summarization prompt (DialogSum lab).
    "dialogsum": "Summarize the following conversation.\n\n{dialogue}\n\nSummary:",
    "dialogsum-answered": "Summarize the following conversation.\n\n{dialogue}\n\nSummary: {summary}",
    # A FLAN-style prompt (FLAN's own dialogue-summary templates ask "What was going on?").
    "dialogsum-flan": "Dialogue:\n\n{dialogue}\n\nWhat was going on?",
    "dialogsum-flan-answered": "Dialogue:\n\n{dialogue}\n\nWhat was going on?\n{summary}",
    # Instruction records (Alpaca / Dolly style), without and with an input.
    "instruction": _ALPACA + "### Instruction:\n{instruction}\n\n### Response:\n",
    "instruction-answered": _ALPACA + "### Instruction:\n{instruction}\n\n### Response:\n{response}",
    "instruction-input": _ALPACA + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "instruction-input-answered":
        _ALPACA + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{response}",
}


def template(name: str) -> PromptTemplate:
    """A named template, e.g. `template("dialogsum")`."""
    if name not in TEXTS:
        raise UnknownTemplateError(f"no prompt template named {name!r}; known: {', '.join(TEXTS)}")
    return PromptTemplate(TEXTS[name], name=name)
