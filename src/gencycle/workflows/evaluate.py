"""`prompt(model, PromptConfig(...))` and `evaluate(model, EvaluateConfig(...))`: in-context prompts.

    prompt:    one example of a split -> its zero/one/few-shot prompt -> the completion, the reference
    evaluate:  (shots x generation config) variants over a split -> scores, report.md / report.html

`gencycle prompt` and `gencycle evaluate` are generated from these configs. MODEL defaults to the
embedded SmolLM2 and the data to the shipped dialogue set; a DialogSum CSV/JSONL file or folder of
splits works the same. In-context examples come from the pool split of the same folder (or from the
file itself, never the query). Every value is checked when the config is made, and the data, the
shot counts and the output folder before the model loads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from gencycle.errors import OptionError, check_input

from .config import RunConfig, override

Task = Literal["dialogsum", "dialogsum-flan"]      # prompt templates with an "-answered" twin for the examples
Selection = Literal["first", "random", "similar"]
DEFAULT_MAX_NEW_TOKENS = 80
SPLIT_NAMES = ("train", "validation", "test", "dev", "valid", "val")


def _integer(name: str, value, minimum: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(name, f"must be an integer >= {minimum}{note}", value)


def parse_config(spec: str):
    from gencycle.evaluation.compare import parse_config as parse  # lazily: it brings matplotlib
    return parse(spec)


def spec_values(spec: str) -> dict:
    from gencycle.evaluation.compare import spec_values as values
    return values(spec)


def _spec(name: str, spec: str) -> None:
    try:
        parse_config(spec)
    except ValueError as error:
        raise OptionError(name, "", message=str(error)) from None


@dataclass
class PromptingConfig:
    """The prompts: task template, data, splits, in-context examples."""

    task: Task = "dialogsum"
    """prompt template (its "-answered" twin writes the in-context examples)"""
    data: str | Path | None = None
    """DialogSum-format CSV/JSONL file or folder of splits (default: the shipped dialogue set)"""
    split: str = "test"
    """split to prompt / evaluate on (train, validation or test; ignored for a single file)"""
    pool_split: str = "train"
    """split the in-context examples come from (a single file is its own pool, never the query)"""
    select: Selection = "first"
    """how in-context examples are chosen (similar: MiniLM sentence embeddings of the dialogues)"""
    max_new_tokens: int | None = None
    """tokens generated at most, >= 1 (default: 80; a --config spec that sets max_new_tokens keeps its own)"""
    plain: bool = False
    """send the prompt as is, without the model's chat template"""
    seed: int = 0
    """seeds random selection and sampling, >= 0"""

    def __post_init__(self):
        if self.task not in get_args(Task):
            raise OptionError("task", f"must be one of {', '.join(get_args(Task))}", self.task)
        if self.select not in get_args(Selection):
            raise OptionError("select", f"must be one of {', '.join(get_args(Selection))}", self.select)
        for name in ("split", "pool_split"):
            if str(getattr(self, name)).lower() not in SPLIT_NAMES:
                raise OptionError(name, "", message=f"unknown split {getattr(self, name)!r}: expected train, "
                                  "validation (or dev) or test")
        if self.max_new_tokens is not None:
            _integer("max_new_tokens", self.max_new_tokens, 1)
        _integer("seed", self.seed, 0)


@dataclass
class PromptConfig:
    """One prompt: build it for one example of the split, complete it, show the reference."""

    prompting: PromptingConfig = field(default_factory=PromptingConfig)
    run: RunConfig = field(default_factory=RunConfig, metadata={"set_by_workflow": ("out", "resume")})
    shots: int = 0
    """in-context examples, >= 0"""
    index: int = 0
    """which example of the split, counted from 0"""
    config: str = "greedy"
    """generation config spec: greedy, "sample:temperature=0.7,top_p=0.9", "beam:num_beams=4\""""

    def __post_init__(self):
        _integer("shots", self.shots, 0)
        _integer("index", self.index, 0)
        _spec("config", self.config)


@dataclass
class EvaluateConfig:
    """Score every (shots x generation config) variant on a split; write the comparison report."""

    prompting: PromptingConfig = field(default_factory=PromptingConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/evaluate"), metadata={
        "set_by_workflow": ("resume",), "help": {"out": "folder for the report: report.md, report.html, "
                                                        "scores.json, scores.png, side_by_side.md"}})
    shots: tuple[int, ...] = (0, 1, 3)
    """shot counts, e.g. 0,1,3 or 0 1 3"""
    config: tuple[str, ...] = ("greedy",)
    """generation config specs, repeatable: greedy, "sample:temperature=0.7,top_p=0.9", "beam:num_beams=4\""""
    limit: int | None = None
    """evaluate the first N examples of the split only, >= 1 (default: all)"""
    batch_size: int = 8
    """prompts completed together, >= 1"""

    def __post_init__(self):
        self.shots, self.config = tuple(self.shots), tuple(self.config)
        if not self.shots:
            raise OptionError("shots", "needs at least one shot count")
        for shots in self.shots:
            _integer("shots", shots, 0)
        if not self.config:
            raise OptionError("config", "needs at least one generation config spec")
        for spec in self.config:
            _spec("config", spec)
        if self.limit is not None:
            _integer("limit", self.limit, 1)
        _integer("batch_size", self.batch_size, 1)
        if self.run.out is None:
            raise OptionError("out", "is needed: the folder the report is written to")


# ---------------------------------------------------------------- data and model
def load_examples(prompting: PromptingConfig) -> tuple[list, list]:
    """(examples of the split, pool of in-context examples)."""
    from gencycle.data import load_dialogsum, load_shipped
    if prompting.data is None:
        return load_shipped(prompting.split), load_shipped(prompting.pool_split)
    path = check_input(prompting.data, "data")
    if path.is_dir():
        return load_dialogsum(path, prompting.split), load_dialogsum(path, prompting.pool_split)
    records = load_dialogsum(path)  # one file: its records are both the queries and the pool
    return records, records


def _check_shots(shots: int, pool: list, one_file: bool) -> None:
    room = len(pool) - 1 if one_file else len(pool)  # a single file's pool never holds the query
    if shots > room:
        raise OptionError("shots", "", message=f"{shots} shots asked, but the pool has only {room} examples")


def load_llm(model, run: RunConfig, plain: bool):
    """(LLM, plain): a model without a chat template gets plain prompts, with a warning."""
    from gencycle.generation import LLM
    llm = model if isinstance(model, LLM) else LLM.load(model, dtype=run.dtype, device=run.device)
    if not plain and not llm.tokenizer.chat_template:
        warnings.warn(f"{model if isinstance(model, (str, Path)) else 'the model'} has no chat template; "
                      "sending plain prompts", stacklevel=3)
        plain = True
    return llm, plain


def embed_fn(select: str):
    """MiniLM sentence embeddings for selection "similar" (a progress bar while the pool is embedded)."""
    if select != "similar":
        return None
    from gencycle.integrate.embeddings import SentenceEncoder
    encoder = SentenceEncoder()
    return lambda texts: encoder.encode(texts, progress=len(texts) > 1, desc="embedding the example pool")


def _max_new_tokens(prompting: PromptingConfig, spec: str) -> int:
    own = spec_values(spec).get("max_new_tokens")
    if own is not None:
        if prompting.max_new_tokens is not None and prompting.max_new_tokens != own:
            warnings.warn(f"--config {spec!r} sets max_new_tokens={own} itself; --max-new-tokens "
                          f"{prompting.max_new_tokens} applies to specs that do not", stacklevel=3)
        return own
    return prompting.max_new_tokens or DEFAULT_MAX_NEW_TOKENS


# ---------------------------------------------------------------- the workflows
@dataclass
class PromptResult:
    prompt: str            # the text the model read (chat-templated unless plain)
    completion: str
    summary: str           # its first paragraph, as scored
    reference: str
    example_id: str
    plain: bool


def prompt(model=None, config: PromptConfig | None = None, /, **options) -> PromptResult:
    """Build the prompt for example `index` of the split and complete it; `options` override by name:
    prompt("smollm2-135m-instruct", shots=2, config="sample:temperature=0.7") (model and config are
    positional, so the generation spec option `config` can be given by name)."""
    from gencycle.assets import DEFAULT_MODEL
    from gencycle.evaluation.compare import PromptMaker, complete, first_paragraph
    config = override(config or PromptConfig(), **options)
    p = config.prompting
    examples, pool = load_examples(p)
    if config.index >= len(examples):
        raise OptionError("index", "", message=f"--index {config.index} is out of range: the {p.split} split has "
                          f"{len(examples)} examples")
    _check_shots(config.shots, pool, examples is pool)
    max_new_tokens = _max_new_tokens(p, config.config)
    generation = parse_config(config.config).replace(max_new_tokens=max_new_tokens)
    example = examples[config.index]
    llm, plain = load_llm(DEFAULT_MODEL if model is None else model, config.run, p.plain)
    maker = PromptMaker(llm, pool, p.task, p.select, embed_fn(p.select), max_new_tokens, p.seed)
    text, messages = maker.build(example, config.shots)
    completion = complete(llm, [text if plain else messages], generation, seed=p.seed, progress=False)[0]
    return PromptResult(text if plain else llm.format_chat(messages), completion, first_paragraph(completion),
                        example.summary, example.id, plain)


@dataclass
class EvaluateResult:
    results: list                       # VariantResult per variant: predictions, scores, settings
    paths: dict[str, Path]              # the report's files: markdown, html, scores (json), ...
    examples: list = field(repr=False)
    title: str = ""


def evaluate(model=None, config: EvaluateConfig | None = None, /, **options) -> EvaluateResult:
    """Run every (shots x config spec) variant on the split and write the report to run.out."""
    from gencycle.assets import DEFAULT_MODEL
    from gencycle.evaluation.compare import Variant, compare, write_results
    config = override(config or EvaluateConfig(), **options)
    p = config.prompting
    examples, pool = load_examples(p)
    one_file = examples is pool
    examples = examples[:config.limit] if config.limit is not None else examples
    for shots in config.shots:
        _check_shots(shots, pool, one_file)
    specs = [(spec, parse_config(spec).replace(max_new_tokens=_max_new_tokens(p, spec))) for spec in config.config]
    name = DEFAULT_MODEL if model is None else model
    llm, plain = load_llm(name, config.run, p.plain)
    variants = [Variant(k, generation, spec, p.select, not plain) for k in config.shots for spec, generation in specs]
    results = compare(llm, examples, variants, pool, p.task, embed_fn=embed_fn(p.select),
                      batch_size=config.batch_size, seed=p.seed)
    title = f"{name if isinstance(name, (str, Path)) else 'model'}: {p.task} on {len(examples)} {p.split} examples"
    paths = write_results(config.run.out, results, examples, title=title)
    return EvaluateResult(results, paths, examples, title)

