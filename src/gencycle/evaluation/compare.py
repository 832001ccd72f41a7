"""The comparison runner: (prompt setting x generation config) variants over a split, scored.

    llm = LLM.load()                                           # the packaged SmolLM2
    variants = make_variants(shots=[0, 1, 3], configs=["greedy", "sample:temperature=0.7,top_p=0.9"])
    results = compare(llm, load_shipped("test")[:20], variants, pool=load_shipped("train"))
    write_results("runs/eval", results, load_shipped("test")[:20])

A variant is a number of in-context examples (shots), how they are chosen (first /
random / similar), whether the prompt goes through the model's chat template, and a
generation config. Each variant's outputs are scored by `metrics.text_scores`, that is
by `rouge-score` and `sacrebleu` themselves; nothing here does score arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gencycle.evaluation.metrics import text_scores
from gencycle.evaluation.report import VariantResult, write_comparison
from gencycle.generation import LLM, GenerationConfig
from gencycle.prompting import FewShotBuilder, render_chat

# Named starting points of a config spec: "greedy", "sample", "beam" (then `:key=value,...`).
BASE_CONFIGS = {
    "greedy": {"do_sample": False},
    "sample": {"do_sample": True},
    "beam": {"num_beams": 4},
}
CHAT_TEMPLATE_TOKENS = 64  # room left in the context window for the chat template around a prompt


def parse_config(spec: str, base: GenerationConfig | None = None) -> GenerationConfig:
    """A generation config from a spec: "greedy", "sample:temperature=0.7,top_p=0.9", "beam:num_beams=3".

    Values are read as bool (true/false), int, float or text; unknown names and bad
    values raise ValueError naming them (GenerationConfig checks every field).
    """
    name, _, rest = spec.strip().partition(":")
    if name not in BASE_CONFIGS:
        raise ValueError(f"generation config spec {spec!r}: it must start with one of {', '.join(BASE_CONFIGS)}")
    values: dict[str, Any] = dict(BASE_CONFIGS[name])
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"generation config spec {spec!r}: expected key=value, got {item!r}")
        values[key.strip()] = _value(value.strip())
    return (base or GenerationConfig()).replace(**values)


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class Variant:
    """One prompt setting x one generation config."""
    shots: int
    config: GenerationConfig
    config_name: str = "greedy"       # the spec it came from, shown in tables
    selection: str = "first"          # first | random | similar (see FewShotBuilder)
    chat: bool = True                 # render the prompt with the model's chat template

    @property
    def name(self) -> str:
        picked = f" {self.selection}" if self.shots and self.selection != "first" else ""
        return f"{self.shots}-shot{picked}, {self.config_name}" + ("" if self.chat else ", plain prompt")

    def settings(self) -> dict[str, Any]:
        return {"shots": self.shots, "selection": self.selection, "chat_template": self.chat,
                "config": self.config_name, "generation": self.config.to_dict()}


def make_variants(shots: Sequence[int], configs: Sequence[str], selection: str = "first", chat: bool = True,
                  max_new_tokens: int = 80) -> list[Variant]:
    """Every (shots, config spec) pair, shots varying slowest."""
    parsed = [(spec, parse_config(spec).replace(max_new_tokens=max_new_tokens)) for spec in configs]
    return [Variant(k, config, spec, selection, chat) for k in shots for spec, config in parsed]


def first_paragraph(text: str) -> str:
    """The reply up to its first blank line, trimmed: a summary is one paragraph, and small
    models often go on with a new prompt or a commentary after it."""
    return text.strip().split("\n\n")[0].strip()


class PromptMaker:
    """Builds the prompts of a task for one LLM: k-shot text from a pool, optionally chat-templated."""

    def __init__(self, llm: LLM, pool: Sequence[Any], task: str = "dialogsum", selection: str = "first",
                 embed_fn: Callable[[list[str]], torch.Tensor] | None = None, max_new_tokens: int = 80,
                 seed: int = 0):
        self.llm = llm
        count = lambda text: len(llm.tokenizer.encode(text))  # noqa: E731
        budget = llm.model.config.max_position_embeddings - max_new_tokens - CHAT_TEMPLATE_TOKENS
        self.builder = FewShotBuilder.from_templates(task, pool, selection=selection, seed=seed,
                                                     embed_fn=embed_fn, count_tokens=count, max_tokens=budget)

    def text(self, record: Any, shots: int) -> str:
        """The in-context prompt (before any chat template)."""
        return self.builder.build(record, shots).text

    def rendered(self, text: str, chat: bool) -> str:
        """What the model reads: the chat-templated text, or the text itself."""
        return render_chat(self.llm.tokenizer, text) if chat else text


def complete(llm: LLM, texts: Sequence[str], config: GenerationConfig, chat: bool, batch_size: int = 8,
             seed: int = 0, desc: str = "generating", progress: bool = True) -> list[str]:
    """Raw completions of `texts` (chat: each text is one user message), in batches of similar length."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # less padding per batch
    if config.do_sample and config.seed is None:
        config = config.replace(seed=seed)
    outputs: list[str] = [""] * len(texts)
    with tqdm(total=len(texts), desc=desc, unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            step = config.replace(seed=config.seed + start) if config.do_sample else config
            if chat:
                done = llm.chat([[{"role": "user", "content": texts[i]}] for i in rows], step)
            else:
                done = llm.generate([texts[i] for i in rows], step)
            for i, out in zip(rows, done):
                outputs[i] = out
            bar.update(len(rows))
    return outputs


def compare(llm: LLM, examples: Sequence[Any], variants: Sequence[Variant], pool: Sequence[Any],
            task: str = "dialogsum", reference_field: str = "summary",
            embed_fn: Callable[[list[str]], torch.Tensor] | None = None, batch_size: int = 8, seed: int = 0,
            postprocess: Callable[[str], str] = first_paragraph, progress: bool = True) -> list[VariantResult]:
    """Run each variant over `examples` (in-context examples come from `pool`) and score it.

    Returns one VariantResult per variant: its (post-processed) outputs in the order of
    `examples`, and `text_scores` against each example's `reference_field`.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    if any(v.selection == "similar" and v.shots for v in variants) and embed_fn is None:
        from gencycle.embeddings import SentenceEncoder
        embed_fn = SentenceEncoder().encode
    references = [_field(e, reference_field) for e in examples]
    makers: dict[tuple[str, int], PromptMaker] = {}
    prompts: dict[tuple[str, int, int], list[str]] = {}  # variants that differ only in config share prompts
    results = []
    for variant in tqdm(variants, desc="variants", unit="variant", disable=not progress):
        key = (variant.selection, variant.config.max_new_tokens)
        if key not in makers:
            makers[key] = PromptMaker(llm, pool, task, variant.selection, embed_fn,
                                      variant.config.max_new_tokens, seed)
        if key + (variant.shots,) not in prompts:
            prompts[key + (variant.shots,)] = [makers[key].text(e, variant.shots) for e in examples]
        texts = prompts[key + (variant.shots,)]
        raw = complete(llm, texts, variant.config, variant.chat, batch_size, seed, variant.name, progress)
        predictions = [postprocess(text) for text in raw]
        results.append(VariantResult(variant.name, predictions, text_scores(predictions, references),
                                     variant.settings()))
    return results


def write_results(out_dir: str | Path, results: Sequence[VariantResult], examples: Sequence[Any],
                  reference_field: str = "summary", count: int = 3, title: str = "Comparison of variants"):
    """`report.write_comparison` for a run over `examples` (DialogSum-style records)."""
    return write_comparison(out_dir, results, [_field(e, reference_field) for e in examples],
                            ids=[str(_field(e, "id", "")) or str(i + 1) for i, e in enumerate(examples)],
                            dialogues=[_field(e, "dialogue", "") for e in examples], count=count, title=title)


def _field(record: Any, name: str, default: Any = None) -> Any:
    value = record.get(name, default) if isinstance(record, dict) else getattr(record, name, default)
    if value is None:
        raise ValueError(f"example {record!r:.80} has no {name!r} field")
    return value
