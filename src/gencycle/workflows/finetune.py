"""`finetune(model, data, FinetuneConfig(...))`: instruction fine-tuning, full or parameter-efficient.

    model + data --template--> (prompt, completion) --tokenize--> examples          (InstructionData)
        before: eval loss, ROUGE on test prompts, perplexity on general text (forgetting check)
        method: full (every parameter) | lora (adapters on target Linears) | prompt-tuning (soft prompt)
        Trainer(...).train()    (checkpoints, resume, DDP under torchrun)
        after: the same measurements; the model / adapter saved; report.json, loss_curve.png

`gencycle finetune` is generated from `FinetuneConfig`: one flag per option (field) of it and of
the configs it holds.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence, get_args

import torch

from gencycle.errors import OptionError, check_input, check_output
from gencycle.prompting.templates import TEXTS
from gencycle.training.data import Example, Pair, chat_pairs, collator_for, load_pairs, pack, tokenize
from gencycle.training.loop import TrainConfig, Trainer, seed_everything
from gencycle.training.report import ParameterCount

from . import steps
from .config import RunConfig, override

Method = Literal["full", "lora", "prompt-tuning"]
METHODS = get_args(Method)
PromptInit = Literal["random", "vocab", "text"]
DEFAULT_LR = {"full": 5e-5, "lora": 2e-4, "prompt-tuning": 3e-2}


def _integer(name: str, value, minimum: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(name, f"must be an integer >= {minimum}{note}", value)


def _number(name: str, value, problem: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise OptionError(name, problem, value)


@dataclass
class DataConfig:
    """Instruction data: templates, splits, lengths."""

    template: str | None = None
    """prompt template name: dialogsum, dialogsum-flan, instruction, instruction-input (default: chosen by
    the records' fields)"""
    chat_template: bool = False
    """send each prompt as a user turn through the model's chat template (instruct models)"""
    eval_data: str | Path | Sequence[dict] | None = None
    """records for the eval loss (default: the validation split of a --data folder)"""
    test_data: str | Path | Sequence[dict] | None = None
    """records whose prompts are completed for ROUGE before / after (default: the test split of a --data folder)"""
    max_length: int = 512
    """tokens per example at most (cut to the model's context window); a long prompt loses its start"""
    packing: bool = False
    """pack whole decoder examples into rows of --max-length tokens (fewer pad tokens)"""

    def __post_init__(self):
        if self.template is not None and self.template not in TEXTS:
            raise OptionError("template", "", message=f"unknown prompt template {self.template!r}; known: "
                              f"{', '.join(t for t in TEXTS if not t.endswith('-answered'))}")
        _integer("max_length", self.max_length, 1)


@dataclass
class MeasureConfig:
    """What is measured before and after training."""

    general_text: str | Path | Sequence[str] | None = None
    """text file (paragraphs split by blank lines) for the forgetting check: perplexity before/after"""
    rouge_examples: int = 20
    """test prompts completed (greedy) and scored with ROUGE before / after; 0 skips ROUGE"""
    max_new_tokens: int = 64
    """tokens generated at most for each test prompt"""

    def __post_init__(self):
        _integer("rouge_examples", self.rouge_examples, 0, " (0 skips ROUGE)")
        _integer("max_new_tokens", self.max_new_tokens, 1)


@dataclass
class LoraConfig:
    """LoRA adapters (--method lora)."""

    lora_rank: int = 8
    """rank r of each adapter: B (out x r) @ A (r x in) is added to the frozen weight"""
    lora_alpha: float = 16
    """scaling, > 0: the adapter's output is multiplied by lora_alpha / lora_rank"""
    lora_dropout: float = 0.05
    """dropout on the adapter's input, in [0, 1)"""
    target: str | tuple[str, ...] = ("q_proj", "v_proj")
    """LoRA target modules: names (q_proj v_proj), groups (attention, mlp, all-linear); one Python string is a regex"""

    def __post_init__(self):
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank <= 0:
            raise OptionError("lora_rank", "", message=f"LoRA rank must be a positive integer, got {self.lora_rank!r}")
        _number("lora_alpha", self.lora_alpha, "must be > 0 (the scale is lora_alpha / lora_rank)", lambda v: v > 0)
        _number("lora_dropout", self.lora_dropout, "must be in [0, 1)", lambda v: 0 <= v < 1)
        if not isinstance(self.target, str):
            self.target = tuple(self.target)
        if not self.target or not all(isinstance(t, str) and t.strip() for t in self.target):
            raise OptionError("target", "must name at least one module (q_proj v_proj, attention, mlp, all-linear)",
                              self.target)


@dataclass
class PromptTuningConfig:
    """Soft prompt (--method prompt-tuning)."""

    num_virtual_tokens: int = 20
    """trainable embeddings put before every prompt"""
    prompt_init: PromptInit = "random"
    """initial soft prompt: random (the spread of the token embeddings), vocab (random tokens' embeddings), text"""
    prompt_init_text: str | None = None
    """text whose token embeddings start the soft prompt (implies --prompt-init text)"""

    def __post_init__(self):
        _integer("num_virtual_tokens", self.num_virtual_tokens, 1)
        if self.prompt_init not in get_args(PromptInit):
            raise OptionError("prompt_init", "", message=f"unknown prompt-tuning init {self.prompt_init!r}; "
                              "use random, vocab or text")
        if self.prompt_init_text is not None and not self.prompt_init_text.strip():
            raise OptionError("prompt_init_text", "must be a non-empty text", self.prompt_init_text)
        if self.prompt_init == "text" and self.prompt_init_text is None:
            raise OptionError("prompt_init", "", message="prompt_init 'text' needs prompt_init_text")
        if self.prompt_init == "vocab" and self.prompt_init_text is not None:  # it was ignored silently
            raise OptionError("prompt_init_text", "", message="prompt_init_text starts the soft prompt from a text "
                              "(prompt_init text); prompt_init 'vocab' starts it from random tokens: give one of them")


@dataclass
class FinetuneConfig:
    """How to fine-tune: the method, and the configs of each part of the run."""

    method: Method = "full"
    """what to train: every parameter, LoRA adapters, or a soft prompt"""
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/finetune"))
    data: DataConfig = field(default_factory=DataConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "set_by_workflow": ("out_dir", "save_trainable_only", "extra"),  # from run.out; True; unused
        "help": {"lr": "peak learning rate (default by method: full 5e-5, lora 2e-4, prompt-tuning 3e-2)"}})

    def __post_init__(self):
        if self.method not in METHODS:
            raise OptionError("method", "", message=f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.method != "full" and self.train.strategy == "fsdp":
            raise OptionError("strategy", "", message="FSDP is for full fine-tuning of models that do not fit one "
                              "process; LoRA and prompt tuning run data-parallel with strategy='ddp'")
        if self.run.resume and self.run.out is None:
            raise OptionError("resume", "", message="resume needs the run folder (out) holding the checkpoints")

    def check_paths(self, data) -> None:
        """Before any work: the input files exist, and the run folder can be written."""
        if isinstance(data, (str, Path)) and str(data) != "shipped":
            check_input(data, "data")
        for option, value in (("eval_data", self.data.eval_data), ("test_data", self.data.test_data),
                              ("general_text", self.measure.general_text)):
            if isinstance(value, (str, Path)):
                check_input(value, option, "file" if option == "general_text" else "file or folder")
        if self.run.out is not None:
            out = check_output(self.run.out, "out")
            if not self.run.resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
                warnings.warn(f"{out} holds checkpoints of an earlier run; this run writes over them "
                              "(resume continues that run instead)", stacklevel=3)

    def train_config(self) -> TrainConfig:
        """The TrainConfig the run uses: --lr by method when not given, checkpoints in run.out."""
        lr = self.train.lr if self.train.lr is not None else DEFAULT_LR[self.method]
        out = str(self.run.out) if self.run.out is not None else None
        return dataclasses.replace(self.train, lr=lr, out_dir=out, save_trainable_only=True)


@dataclass
class FinetuneResult:
    method: str
    out_dir: Path | None
    parameters: ParameterCount
    train_seconds: float
    peak_memory_bytes: int
    memory_kind: str                      # "rss" (CPU) or "cuda_max_allocated"
    history: list[dict]
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    rouge_before: dict | None = None
    rouge_after: dict | None = None
    perplexity_before: float | None = None  # forgetting check: general text
    perplexity_after: float | None = None
    samples: list[dict] = field(default_factory=list)  # test prompts: prompt, reference, before, after
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model (wrapper for soft prompts)

    def to_dict(self) -> dict:
        skip = {"model", "history", "parameters", "out_dir"}
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        out.update(out_dir=str(self.out_dir) if self.out_dir else None, trainable_parameters=self.parameters.trainable,
                   total_parameters=self.parameters.total, trainable_percent=self.parameters.percent,
                   steps=len(self.history), final_loss=self.history[-1]["loss"] if self.history else None)
        return out

    def summary(self) -> str:
        lines = [f"method: {self.method}", str(self.parameters),
                 f"time: {self.train_seconds:.1f} s, peak memory ({self.memory_kind}): "
                 f"{self.peak_memory_bytes / 2**20:,.0f} MiB"]
        for name in ("eval_loss", "perplexity"):
            before, after = getattr(self, f"{name}_before"), getattr(self, f"{name}_after")
            if before is not None:
                lines.append(f"{name}: {before:.4f} -> {after:.4f}")
        if self.rouge_before:
            lines.append("ROUGE: " + ", ".join(f"{k} {self.rouge_before[k]:.4f} -> {self.rouge_after[k]:.4f}"
                                               for k in self.rouge_before))
        return "\n".join(lines)


@dataclass
class InstructionData:
    train: list[Example]
    eval: list[Example] | None
    test: list[Pair]                # prompts completed for ROUGE, with their reference completions


def _is_folder(data) -> bool:
    return isinstance(data, (str, Path)) and (str(data) == "shipped" or Path(data).is_dir())


def _split(data, split: str):
    """A split of a folder of splits (or of "shipped"); None when `data` is one file, a list, or lacks it."""
    if _is_folder(data):
        try:
            return load_pairs(data, split)
        except FileNotFoundError:
            return None
    return None


def example_length(config: DataConfig, model_config) -> int:
    """--max-length, cut to the model's context window (relative positions have none)."""
    if model_config.position == "relative":
        return config.max_length
    return min(config.max_length, model_config.max_position_embeddings)


def instruction_data(data, config: DataConfig, tokenizer, model_config, test_examples: int) -> InstructionData:
    """data: a .jsonl / .csv file, a folder of train / validation / test splits, "shipped", or a list of
    records (instruction/input/output, prompt/completion, or dialogue/summary). From a folder, the
    validation split gives the eval loss and the test split the ROUGE prompts, unless
    config.eval_data / test_data say otherwise."""
    arch, template, length = model_config.architecture, config.template, example_length(config, model_config)
    train_pairs = load_pairs(data, "train" if _is_folder(data) else None, template)
    eval_pairs = (load_pairs(config.eval_data, template=template) if config.eval_data is not None
                  else _split(data, "validation"))
    test_pairs = (load_pairs(config.test_data, template=template) if config.test_data is not None
                  else _split(data, "test"))
    test_pairs = (test_pairs or [])[:test_examples]
    if config.chat_template:
        train_pairs, eval_pairs, test_pairs = (chat_pairs(p, tokenizer) if p else p
                                               for p in (train_pairs, eval_pairs, test_pairs))
    special = not config.chat_template  # the chat template already holds the special tokens
    examples = tokenize(train_pairs, tokenizer, arch, length, add_special_tokens=special)
    if config.packing and arch == "decoder":
        examples = pack(examples, length)
    eval_examples = tokenize(eval_pairs, tokenizer, arch, length, add_special_tokens=special) if eval_pairs else None
    return InstructionData(examples, eval_examples, test_pairs)


def apply_method(model: torch.nn.Module, config: FinetuneConfig, tokenizer) -> torch.nn.Module:
    """The model with the parameters `config.method` trains made trainable (and the others frozen)."""
    if config.method == "full":
        return model.requires_grad_(True)
    if config.method == "lora":
        from gencycle.adapters import apply_lora
        lora = config.lora
        try:
            return apply_lora(model, rank=lora.lora_rank, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                              target_modules=lora.target)
        except ValueError as error:
            if "matched no Linear module" not in str(error):
                raise
            raise OptionError("target", "", message=str(error).replace("target_modules", "target", 1)) from None
    from gencycle.adapters import apply_prompt_tuning
    soft = config.prompt_tuning
    init = "text" if soft.prompt_init_text is not None and soft.prompt_init == "random" else soft.prompt_init
    return apply_prompt_tuning(model, soft.num_virtual_tokens, init=init, init_text=soft.prompt_init_text,
                               tokenizer=tokenizer, seed=config.train.seed)


def finetune(model: str | Path | torch.nn.Module, data: str | Path | Sequence[dict],
             config: FinetuneConfig | None = None, *, tokenizer=None, **options) -> FinetuneResult:
    """Fine-tune `model` (a path / packaged name, or a Transformer with `tokenizer=`) on `data`
    (see `instruction_data`) as `config` says; `options` override its fields by name:
    finetune(model, data, method="lora", lora_rank=4, max_steps=100, out=None).
    Input files and the run folder are checked before anything is loaded."""
    config = override(config or FinetuneConfig(), **options)
    config.check_paths(data)
    train_config = config.train_config()
    seed_everything(train_config.seed)
    # load the model and the data
    loaded = steps.load(model, tokenizer, config.run)
    model, tokenizer, dist = loaded.model, loaded.tokenizer, loaded.dist
    base_config = model.config
    if base_config.architecture == "encoder":
        raise ValueError("instruction fine-tuning needs a decoder or encoder-decoder model, not an encoder-only one")
    examples = instruction_data(data, config.data, tokenizer, base_config, config.measure.rouge_examples)
    if config.train.eval_every and examples.eval is None:
        import warnings
        warnings.warn("--eval-every needs eval data (--eval-data, or a folder's validation split): no eval loss "
                      "is computed")
    general = steps.load_texts(config.measure.general_text) if config.measure.general_text is not None else None
    measure = dict(max_new_tokens=config.measure.max_new_tokens, max_length=example_length(config.data, base_config))
    # measure before (main process), adapt, train
    progress = config.train.progress
    before = (steps.measure(model, tokenizer, examples.test, general, **measure, when="before" if progress else None)
              if dist.is_main else steps.Measurement())
    dist.barrier()
    model = apply_method(model, config, tokenizer).to(dist.device)
    trainer = Trainer(model, train_config, examples.train, eval_data=examples.eval,
                      collate_fn=collator_for(base_config, tokenizer), device=dist.device)
    trained = steps.train(trainer, resume=config.run.resume)
    out_dir = Path(config.run.out) if config.run.out is not None else None
    result = FinetuneResult(config.method, out_dir, trained.parameters, trained.seconds, trained.peak_memory_bytes,
                            trained.memory_kind, trained.history, trained.eval_loss_before, trained.eval_loss_after)
    # gather, measure after, save
    model = steps.gather(trainer, dist)  # collective under FSDP
    if dist.is_main:
        after = steps.measure(model, tokenizer, examples.test, general, **measure, when="after" if progress else None)
        result.rouge_before, result.rouge_after = before.rouge, after.rouge
        result.perplexity_before, result.perplexity_after = before.perplexity, after.perplexity
        result.samples = [{"prompt": p.prompt, "reference": p.completion.strip(), "before": b, "after": a}
                          for p, b, a in zip(examples.test, before.predictions, after.predictions)]
        if out_dir is not None:
            steps.save(model, tokenizer, out_dir, adapter=config.method != "full", base_name=loaded.path)
            steps.write_report(out_dir, result.to_dict())
    result.model = model
    dist.barrier()
    return result
