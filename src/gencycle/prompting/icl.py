"""In-context learning: zero-, one- and few-shot prompts from a pool of solved examples.

A few-shot prompt is the instruction (optional), k solved examples rendered with
the example template, and the query rendered with the query template, joined by
a separator. Examples are chosen first-k, at random (seeded), or most similar to
the query by cosine similarity of sentence embeddings. When a token budget is
given, the least relevant examples are dropped until the prompt fits; the query
is never cut.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from gencycle.prompting.templates import PromptTemplate, template

SELECTIONS = ("first", "random", "similar")


@dataclass
class Prompt:
    text: str
    examples_used: list[Any] = field(default_factory=list)  # in the order they appear in the prompt
    dropped: int = 0  # examples selected but dropped to fit max_tokens


class FewShotBuilder:
    """Builds k-shot prompts for one task.

    example_template: renders a solved example (has the answer field).
    query_template: renders the query (no answer); its fields are also the text
        compared by `selection="similar"`.
    examples: the pool, as dicts or dataclasses (e.g. `DialogueExample`).
    embed_fn: list[str] -> Tensor (N, d), needed for `selection="similar"`.
    count_tokens, max_tokens: str -> int and the budget (context length minus
        the tokens left for generation); both or neither.

    Prompt order: for "first" and "random", in selection order; for "similar",
    the most similar example comes last, next to the query.
    """

    def __init__(self, example_template: PromptTemplate | str, query_template: PromptTemplate | str,
                 examples: Sequence[Any] = (), instruction: str = "", separator: str = "\n\n\n",
                 selection: str = "first", seed: int = 0,
                 embed_fn: Callable[[list[str]], torch.Tensor] | None = None,
                 count_tokens: Callable[[str], int] | None = None, max_tokens: int | None = None):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if selection == "similar" and embed_fn is None:
            raise ValueError("selection='similar' needs embed_fn (list[str] -> Tensor (N, d))")
        if (count_tokens is None) != (max_tokens is None):
            raise ValueError("give both count_tokens and max_tokens, or neither")
        self.example_template = _template(example_template)
        self.query_template = _template(query_template)
        self.examples = list(examples)
        self.instruction, self.separator, self.selection = instruction, separator, selection
        self.embed_fn, self.count_tokens, self.max_tokens = embed_fn, count_tokens, max_tokens
        self._rng = random.Random(seed)
        self._pool_embeddings: torch.Tensor | None = None

    @classmethod
    def from_templates(cls, name: str, examples: Sequence[Any] = (), **kwargs) -> FewShotBuilder:
        """Builder from a named template pair: `name` for the query, `name-answered` for examples."""
        return cls(template(f"{name}-answered"), template(name), examples, **kwargs)

    def build(self, query: Any, shots: int = 0) -> Prompt:
        """The prompt for `query` (a record, or a plain string when the query template has one field)."""
        query = self._values(query, self.query_template)
        query_text = self.query_template.format(**query)
        chosen = self._select(query, shots)  # most relevant first
        if self.count_tokens is not None:
            alone = self.count_tokens(self._join([], query_text))
            if alone > self.max_tokens:
                raise ValueError(f"the query alone is {alone} tokens, more than max_tokens={self.max_tokens}")
        kept = list(chosen)
        while kept and self.count_tokens is not None and \
                self.count_tokens(self._join(self._ordered(kept), query_text)) > self.max_tokens:
            kept.pop()  # the least relevant
        dropped = len(chosen) - len(kept)
        if dropped:
            warnings.warn(f"dropped {dropped} of {len(chosen)} in-context examples so the prompt fits "
                          f"max_tokens={self.max_tokens}", stacklevel=2)
        kept = self._ordered(kept)
        return Prompt(self._join(kept, query_text), kept, dropped)

    def _join(self, examples: list[Any], query_text: str) -> str:
        parts = [self.instruction] if self.instruction else []
        parts += [self.example_template.format(**self._values(e, self.example_template)) for e in examples]
        return self.separator.join(parts + [query_text])

    def _ordered(self, by_relevance: list[Any]) -> list[Any]:
        return by_relevance[::-1] if self.selection == "similar" else by_relevance

    def _select(self, query: Mapping[str, Any], shots: int) -> list[Any]:
        if shots < 0:
            raise ValueError(f"shots must be >= 0, got {shots}")
        # Never show the query itself as a solved example.
        pool = [i for i, e in enumerate(self.examples) if self._key(e) != self._key(query)]
        if shots > len(pool):
            raise ValueError(f"{shots} shots asked, but the pool has only {len(pool)} examples")
        if shots == 0:
            return []
        if self.selection == "first":
            picked = pool[:shots]
        elif self.selection == "random":
            picked = self._rng.sample(pool, shots)
        else:
            if self._pool_embeddings is None:
                self._pool_embeddings = self.embed_fn([self._similarity_text(e) for e in self.examples])
            q = self.embed_fn([self._similarity_text(query)])  # (1, d)
            sims = F.cosine_similarity(self._pool_embeddings[pool].float(), q.float(), dim=-1)  # (len(pool),)
            picked = [pool[i] for i in sims.argsort(descending=True, stable=True)[:shots].tolist()]
        return [self.examples[i] for i in picked]

    def _key(self, record: Any) -> tuple:
        values = _as_dict(record)
        return tuple(str(values.get(f)) for f in self.query_template.fields)

    def _similarity_text(self, record: Any) -> str:
        values = _as_dict(record)
        return "\n".join(str(values.get(f, "")) for f in self.query_template.fields)

    @staticmethod
    def _values(record: Any, tmpl: PromptTemplate) -> dict[str, Any]:
        if isinstance(record, str):
            if len(tmpl.fields) != 1:
                raise TypeError(f"a plain-string query needs a one-field template; this one has {tmpl.fields}")
            return {tmpl.fields[0]: record}
        return _as_dict(record)


def _as_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, str):
        return {}
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    if isinstance(record, Mapping):
        return dict(record)
    raise TypeError(f"examples must be dicts or dataclasses, got {type(record).__name__}")


def _template(t: PromptTemplate | str) -> PromptTemplate:
    return t if isinstance(t, PromptTemplate) else PromptTemplate(t)


def render_chat(tokenizer, user_text: str, system: str | None = None) -> str:
    """The prompt text an instruct model expects: its chat template, ready for the reply."""
    if not callable(getattr(tokenizer, "apply_chat_template", None)):
        raise TypeError(f"{type(tokenizer).__name__} has no apply_chat_template; use a plain prompt instead")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
