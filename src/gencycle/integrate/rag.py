"""Answer a question from retrieved passages, citing them by number.

    llm = LLM.load("smollm2-135m-instruct")
    result = answer_question(llm, Retriever("runs/dialogues.idx"), "Who would be pizza?")
    print(result.format())            # the answer, then the sources it cites: path and line range

The retrieved chunks become passages (overlapping chunks of one document merge into one) and go
into the prompt as numbered sources, best first. The prompt must fit the model's context window
(or `context_tokens`) with room for `max_new_tokens`: the lowest-ranked passages are dropped
until it does, and the result says which. A question that does not fit even without passages is
an error that gives the token counts.

Citing: the instructions ask for [n] citations, and the reply starts with `answer_prefix`
("According to source [" by default), whose number the model writes. SmolLM2-135M-Instruct does
not cite on its own: with the instructions alone, or an example in the system prompt, none of
its answers to three test questions held a [n]; with the prefix all did. `answer_prefix=""`
leaves the reply to the model alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ..errors import OptionError
from .index import location
from .retrieval import Hit, Retriever

INSTRUCTIONS = ("Answer the question using only the numbered sources below. Cite the source you used "
                "by its number in square brackets, like [1]. If the sources do not answer the question, "
                "say that you do not know.")


@dataclass
class RagConfig:
    """Retrieval and answering settings of `gencycle rag ask`."""

    top_k: int = 3
    """passages to retrieve, >= 1 (the prompt keeps as many as fit, best first)"""
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    """retrieval: dense (cosine of embeddings), bm25 (lexical) or hybrid (both, relative score fusion)"""
    max_new_tokens: int = 96
    """tokens the answer may take, >= 1 (reserved in the context window)"""
    context_tokens: int | None = None
    """prompt plus answer budget in tokens, more than --max-new-tokens (default: the model's context
    window; a larger budget is cut to the window)"""
    answer_prefix: str = "According to source ["
    """text the reply starts with (part of the answer), so that a small model names a source; "" for none"""

    def __post_init__(self):
        for name in ("top_k", "max_new_tokens", "context_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise OptionError(name, "must be an integer >= 1", value)
        if self.mode not in ("hybrid", "dense", "bm25"):
            raise OptionError("mode", "must be hybrid, dense or bm25", self.mode)
        if self.context_tokens is not None and self.context_tokens <= self.max_new_tokens:
            raise OptionError("context_tokens", f"must be more than max_new_tokens ({self.max_new_tokens}), which "
                              "it keeps for the answer", self.context_tokens)
        if not isinstance(self.answer_prefix, str):
            raise OptionError("answer_prefix", "must be text", self.answer_prefix)


@dataclass(frozen=True)
class Passage:
    """A source in the prompt: one chunk, or overlapping chunks of one document merged (rank and score of
    the best). Lines are 1-based and inclusive."""
    source: str
    record: str | None
    start_line: int
    end_line: int
    start_char: int
    end_char: int
    text: str
    rank: int
    score: float

    @property
    def location(self) -> str:
        return location(self.source, self.record, self.start_line, self.end_line)

    @classmethod
    def of(cls, hit: Hit) -> "Passage":
        c = hit.chunk
        return cls(c.source, c.record, c.start_line, c.end_line, c.start_char, c.end_char, c.text, hit.rank,
                   hit.score)

    def overlaps(self, other: "Passage") -> bool:
        return (self.source, self.record) == (other.source, other.record) and \
            self.start_char < other.end_char and other.start_char < self.end_char

    def merge(self, other: "Passage") -> "Passage":
        """One passage covering both (they overlap): the text spliced at the overlap."""
        first, second = sorted((self, other), key=lambda p: p.start_char)
        text = first.text + second.text[max(first.end_char - second.start_char, 0):] \
            if second.end_char > first.end_char else first.text
        best = min(self, other, key=lambda p: p.rank)
        return Passage(self.source, self.record, min(self.start_line, other.start_line),
                       max(self.end_line, other.end_line), first.start_char, max(self.end_char, other.end_char),
                       text, best.rank, best.score)


def passages(hits: list[Hit]) -> list[Passage]:
    """Hits (best first) as passages: a hit that overlaps a passage already made joins it."""
    out: list[Passage] = []
    for passage in map(Passage.of, hits):
        while (same := next((i for i, p in enumerate(out) if p.overlaps(passage)), None)) is not None:
            passage = out.pop(same).merge(passage)
        out.append(passage)
    return sorted(out, key=lambda p: p.rank)


@dataclass
class RagAnswer:
    """An answer and where it came from. sources: the passages in the prompt, numbered from 1;
    cited: the source numbers the answer cites (in order of first citation); unknown_citations:
    numbers it cites that no source has; dropped: passages left out to fit the context window."""
    question: str
    answer: str
    sources: list[Passage]
    cited: list[int]
    unknown_citations: list[int] = field(default_factory=list)
    dropped: list[Passage] = field(default_factory=list)
    prompt: str = ""
    prompt_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [self.answer.strip() or "(the model gave no answer)", ""]
        if self.cited:
            lines.append("Sources cited:")
            lines += [f"  [{n}] {self.sources[n - 1].location}" for n in self.cited]
        else:
            lines.append("The answer cites no source.")
        others = [n for n in range(1, len(self.sources) + 1) if n not in self.cited]
        if others:
            lines.append("Retrieved, not cited:")
            lines += [f"  [{n}] {self.sources[n - 1].location}" for n in others]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def citations(text: str, sources: int) -> tuple[list[int], list[int]]:
    """Source numbers cited in `text` as [n] or [n, m] (first citation order), and those out of 1..sources."""
    found: list[int] = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text):
        for number in (int(n) for n in group.split(",")):
            if number not in found:
                found.append(number)
    return [n for n in found if 1 <= n <= sources], [n for n in found if not 1 <= n <= sources]


def source_block(number: int, passage: Passage) -> str:
    return f"[{number}] {passage.location}\n{passage.text.strip()}"


def render(question: str, sources: list[Passage], tokenizer, answer_prefix: str = "") -> str:
    """The prompt text: the chat template's rendering when the tokenizer has one, else plain text;
    it ends with `answer_prefix`, the start of the reply."""
    blocks = "\n\n".join(source_block(n, p) for n, p in enumerate(sources, 1)) or "(no sources)"
    user = f"Sources:\n\n{blocks}\n\nQuestion: {question.strip()}"
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "system", "content": INSTRUCTIONS},
                                              {"role": "user", "content": user}],
                                             add_generation_prompt=True) + answer_prefix
    return f"{INSTRUCTIONS}\n\n{user}\nAnswer: {answer_prefix}"


def fit_prompt(question: str, sources: list[Passage], tokenizer, budget: int,
               answer_prefix: str = "") -> tuple[str, int, list[Passage], list[Passage]]:
    """The prompt with the most best-ranked passages that fits `budget` tokens: (prompt, its tokens,
    kept, dropped). A question that does not fit with no passage at all is an error."""
    def tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=not tokenizer.chat_template))

    bare = tokens(render(question, [], tokenizer, answer_prefix))
    if bare > budget:
        asked = tokens(question)
        raise ValueError(f"the question is too long: {asked} tokens, and the prompt without any passage needs "
                         f"{bare} tokens, more than the {budget} the context window leaves for it")
    for keep in range(len(sources), -1, -1):
        prompt = render(question, sources[:keep], tokenizer, answer_prefix)
        used = tokens(prompt)
        if used <= budget:
            return prompt, used, sources[:keep], sources[keep:]
    raise AssertionError("unreachable: the bare prompt fits")


def answer_question(llm, retriever: Retriever, question: str, config: RagConfig | None = None,
                    **overrides) -> RagAnswer:
    """Retrieve, build the prompt that fits, answer greedily, and find the citations."""
    import dataclasses
    config = dataclasses.replace(config or RagConfig(), **overrides)
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
    window = llm.model.config.max_position_embeddings
    limit = min(window, config.context_tokens) if config.context_tokens else window
    budget = limit - config.max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in a context of "
                         f"{limit} tokens")
    found = passages(retriever.search(question, config.top_k, config.mode))
    prompt, used, kept, dropped = fit_prompt(question, found, llm.tokenizer, budget, config.answer_prefix)
    notes = []
    if dropped:
        ranks = ", ".join(str(p.rank) for p in dropped)
        notes.append(f"dropped {len(dropped)} of {len(found)} passages (retrieval rank {ranks}) to fit the "
                     f"context window ({limit} tokens, {config.max_new_tokens} of them kept for the answer)")
    if not kept:
        notes.append("no passage fitted: the answer is not grounded in the documents")
    text = config.answer_prefix + _generate(llm, prompt, config.max_new_tokens)
    cited, unknown = citations(text, len(kept))
    if unknown:
        notes.append(f"the answer cites {', '.join(f'[{n}]' for n in unknown)}, which no source has")
    return RagAnswer(question, text, kept, cited, unknown, dropped, prompt, used, notes)


def _generate(llm, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of a prompt already rendered (chat template included when there is one)."""
    from ..generation import generate
    config = llm.make_config(max_new_tokens=max_new_tokens, do_sample=False)
    ids, mask = llm.encode([prompt], templated=bool(llm.tokenizer.chat_template))
    out = generate(llm.model, ids, mask, config, tokenizer=llm.tokenizer)
    return llm.completions(out, ids.shape[1], config)[0].rstrip()
