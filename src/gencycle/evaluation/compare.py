"""The comparison runner: (prompt setting x generation config) variants over a split, scored.

    llm = LLM.load()                                           # the packaged SmolLM2
    variants = make_variants(shots=[0, 1, 3], configs=["greedy", "sample:temperature=0.7,top_p=0.9"])
    results = compare(llm, load_shipped("test")[:20], variants, pool=load_shipped("train"))
    write_results("runs/eval", results, load_shipped("test")[:20])

A variant is a number of in-context examples (shots), how they are chosen (first /
random / similar), whether the prompt goes through the model's chat template, and a
generation config. Each variant's outputs are scored by `metrics.text_scores`, that is
by `rouge-score` and `sacrebleu` themselves; nothing here does score arithmetic.

Chat prompts give an instruct model its solved examples as earlier turns of the
conversation (user: the task, assistant: the answer), then the query as the last user
message; with 0 shots that is `render_chat` of the prompt. Packing a k-shot text into one
user message worked worst for SmolLM2-135M-Instruct: it went on with the dialogue instead
of summarizing it (3-shot ROUGE-1 0.19, against 0.24 as turns, on 8 test dialogues).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gencycle.evaluation.metrics import text_scores
from gencycle.evaluation.report import VariantResult, write_comparison
from gencycle.generation import LLM, GenerationConfig
from gencycle.generation.llm import ignored_settings
from gencycle.prompting import FewShotBuilder

# Named starting points of a config spec: "greedy", "sample", "beam" (then `:key=value,...`).
BASE_CONFIGS = {
    "greedy": {"do_sample": False},
    "sample": {"do_sample": True},
    "beam": {"num_beams": 4},
}
CHAT_TEMPLATE_TOKENS = 64  # context kept free for the chat template's system prompt and markers...
TURN_TOKENS = 12           # ... and for the markers of each in-context example's two turns
Messages = list[dict]


def spec_values(spec: str) -> dict[str, Any]:
    """The key=value settings a spec writes itself ("sample:top_p=0.9" -> {"top_p": 0.9}), base not included."""
    name, _, rest = spec.strip().partition(":")
    if name not in BASE_CONFIGS:
        raise ValueError(f"generation config spec {spec!r}: it must start with one of {', '.join(BASE_CONFIGS)}")
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"generation config spec {spec!r}: expected key=value, got {item!r}")
        values[key.strip()] = _value(value.strip())
    return values


def parse_config(spec: str, base: GenerationConfig | None = None) -> GenerationConfig:
    """A generation config from a spec: "greedy", "sample:temperature=0.7,top_p=0.9", "beam:num_beams=3".

    Values are read as bool (true/false), int, float or text; unknown names and bad
    values raise ValueError naming them (GenerationConfig checks every field).
    """
    own = spec_values(spec)  # checks the base name first
    values = {**BASE_CONFIGS[spec.strip().partition(":")[0]], **own}
    try:
        config = (base or GenerationConfig()).replace(**values)
    except ValueError as error:
        raise ValueError(f"generation config spec {spec!r}: {error}") from None
    ignored = ignored_settings(config, own)
    if ignored:
        warnings.warn(f"generation config spec {spec!r}: {', '.join(ignored)} ignored without sampling "
                      "(start the spec with sample: to sample)", stacklevel=2)
    return config


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
    """Every (shots, config spec) pair, shots varying slowest. `max_new_tokens` applies to the specs
    that do not set it themselves ("greedy:max_new_tokens=5" keeps its 5, as its name says)."""
    parsed = []
    for spec in configs:
        config = parse_config(spec)
        if "max_new_tokens" not in spec_values(spec):
            config = config.replace(max_new_tokens=max_new_tokens)
        parsed.append((spec, config))
    return [Variant(k, config, spec, selection, chat) for k in shots for spec, config in parsed]


def first_paragraph(text: str) -> str:
    """The reply up to its first blank line, trimmed: a summary is one paragraph, and small
    models often go on with a new prompt or a commentary after it."""
    return text.strip().split("\n\n")[0].strip()


class PromptMaker:
    """Builds the prompts of a task for one LLM from a pool of solved examples.

    `build` picks the examples (FewShotBuilder: selection, token budget) and gives both the plain
    k-shot text and the same examples as a conversation (user: task, assistant: answer) for the
    chat template.
    """

    def __init__(self, llm: LLM, pool: Sequence[Any], task: str = "dialogsum", selection: str = "first",
                 embed_fn: Callable[[list[str]], torch.Tensor] | None = None, max_new_tokens: int = 80,
                 seed: int = 0):
        self.llm = llm
        budget = llm.model.config.max_position_embeddings - max_new_tokens - CHAT_TEMPLATE_TOKENS
        self.builder = FewShotBuilder.from_templates(task, pool, selection=selection, seed=seed, embed_fn=embed_fn,
                                                     count_tokens=self._count, max_tokens=budget)

    def _count(self, text: str) -> int:
        # The plain text, plus the chat markers its examples would need as turns.
        return len(self.llm.tokenizer.encode(text)) + TURN_TOKENS * text.count(self.builder.separator)

    def build(self, record: Any, shots: int) -> tuple[str, Messages]:
        """The plain k-shot prompt and the same prompt as chat messages."""
        prompt = self.builder.build(record, shots)
        query, answered = self.builder.query_template, self.builder.example_template
        messages = []
        for example in prompt.examples_used:
            values = _as_dict(example)
            task, solved = query.format(**values), answered.format(**values)
            answer = solved[len(task):].strip() if solved.startswith(task) else solved
            messages += [{"role": "user", "content": task}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": query.format(**_as_dict(record))})
        return prompt.text, messages

    def rendered(self, record: Any, shots: int, chat: bool) -> str:
        """The text the model reads: the chat-templated conversation, or the plain prompt."""
        text, messages = self.build(record, shots)
        return self.llm.format_chat(messages) if chat else text


def complete(llm: LLM, prompts: Sequence[str | Messages], config: GenerationConfig, batch_size: int = 8,
             seed: int = 0, desc: str = "generating", progress: bool = True) -> list[str]:
    """Raw completions of plain prompts (str) or of conversations (lists of messages; not mixed),
    in batches of similar length. Sampling is seeded per batch from `seed` when the config has no seed."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    order = sorted(range(len(prompts)), key=lambda i: -len(str(prompts[i])))  # less padding per batch
    if config.do_sample and config.seed is None:
        config = config.replace(seed=seed)
    outputs: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            step = config.replace(seed=config.seed + start) if config.do_sample else config
            batch = [prompts[i] for i in rows]
            done = llm.generate(batch, step) if isinstance(batch[0], str) else llm.chat(batch, step)
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
        from gencycle.integrate.embeddings import SentenceEncoder
        embed_fn = SentenceEncoder().encode
    if any(v.chat for v in variants) and not llm.tokenizer.chat_template:
        raise ValueError("this model's tokenizer has no chat template: use plain prompts (Variant(chat=False))")
    references = [_field(e, reference_field) for e in examples]
    makers: dict[tuple[str, int], PromptMaker] = {}
    prompts: dict[tuple[str, int, int], list[tuple[str, Messages]]] = {}  # variants that differ only in config share prompts
    results = []
    for variant in tqdm(variants, desc="variants", unit="variant", disable=not progress):
        key = (variant.selection, variant.config.max_new_tokens)
        if key not in makers:
            makers[key] = PromptMaker(llm, pool, task, variant.selection, embed_fn,
                                      variant.config.max_new_tokens, seed)
        if key + (variant.shots,) not in prompts:
            prompts[key + (variant.shots,)] = [makers[key].build(e, variant.shots) for e in examples]
        built = prompts[key + (variant.shots,)]  # (text, messages) per example
        inputs = [messages if variant.chat else text for text, messages in built]
        raw = complete(llm, inputs, variant.config, batch_size, seed, variant.name, progress)
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


def _as_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)


def _field(record: Any, name: str, default: Any = None) -> Any:
    value = record.get(name, default) if isinstance(record, dict) else getattr(record, name, default)
    if value is None:
        raise ValueError(f"example {record!r:.80} has no {name!r} field")
    return value
