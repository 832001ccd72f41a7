"""`finetune(...)`: instruction fine-tuning, full or parameter-efficient, with its report.

    model + data --template--> (prompt, completion) --tokenize--> examples
        before: eval loss, ROUGE on test prompts, perplexity on general text (forgetting check)
        method: full (every parameter) | lora (adapters on target Linears) | prompt-tuning (soft prompt)
        Trainer(...).train()    (checkpoints, resume, DDP under torchrun)
        after: the same measurements; the model / adapter saved; report.json, loss_curve.png

`gencycle finetune` is a thin wrapper over this function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from . import distributed
from .data import chat_pairs, collator_for, load_pairs, pack, tokenize
from .loop import TrainConfig, Trainer, seed_everything
from .report import MemoryMonitor, ParameterCount, count_parameters

Method = Literal["full", "lora", "prompt-tuning"]
METHODS = ("full", "lora", "prompt-tuning")
DEFAULT_LR = {"full": 5e-5, "lora": 2e-4, "prompt-tuning": 3e-2}


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
    samples: list[dict] = field(default_factory=list)  # test prompts: reference, before, after
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


def _split(data, split: str):
    """A split of a folder of splits (or of "shipped"); None when `data` is one file or a list."""
    if isinstance(data, (str, Path)) and (str(data) == "shipped" or Path(data).is_dir()):
        try:
            return load_pairs(data, split)
        except FileNotFoundError:
            return None
    return None


def _load_texts(texts) -> list[str]:
    """General text for the forgetting check: a list of strings, or a file of blank-line-separated paragraphs."""
    if isinstance(texts, (str, Path)):
        paragraphs = Path(texts).read_text(encoding="utf-8").split("\n\n")
        texts = [p.strip() for p in paragraphs if p.strip()]
    return list(texts)


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    from gencycle.generation import LLM
    was_training = model.training
    model.eval()
    llm, out = LLM(model, tokenizer), []
    for start in range(0, len(prompts), batch_size):
        out += llm.generate(prompts[start:start + batch_size], max_new_tokens=max_new_tokens, do_sample=False)
    model.train(was_training)
    return [text.strip() for text in out]


def _apply_method(model, method: str, tokenizer, *, lora_rank, lora_alpha, lora_dropout, target,
                  num_virtual_tokens, prompt_init, prompt_init_text, seed):
    if method == "full":
        return model.requires_grad_(True)
    if method == "lora":
        from gencycle.adapters import apply_lora
        return apply_lora(model, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, target_modules=target)
    from gencycle.adapters import apply_prompt_tuning
    init = prompt_init if prompt_init_text is None or prompt_init != "random" else "text"
    return apply_prompt_tuning(model, num_virtual_tokens, init=init, init_text=prompt_init_text,
                               tokenizer=tokenizer, seed=seed)


def finetune(
    model: str | Path | torch.nn.Module,
    data: str | Path | Sequence[dict],
    *,
    method: Method = "full",
    out: str | Path | None = "runs/finetune",
    tokenizer=None,
    template: str | None = None,
    chat_template: bool = False,
    eval_data: str | Path | Sequence[dict] | None = None,
    test_data: str | Path | Sequence[dict] | None = None,
    general_text: str | Path | Sequence[str] | None = None,
    rouge_examples: int = 20,
    max_new_tokens: int = 64,
    max_length: int = 512,
    packing: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.05,
    target: str | Sequence[str] = ("q_proj", "v_proj"),
    num_virtual_tokens: int = 20,
    prompt_init: str = "random",
    prompt_init_text: str | None = None,
    epochs: float = 1.0,
    max_steps: int | None = None,
    lr: float | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    seed: int = 0,
    precision: str = "auto",
    strategy: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune `model` (a path / packaged name, or a Transformer with `tokenizer=`) on `data`.

    data: a .jsonl / .csv file, a folder of train / validation / test splits, "shipped", or a list of
    records (instruction/input/output, prompt/completion, or dialogue/summary). From a folder, the
    validation split gives the eval loss and the test split the ROUGE before / after, unless
    eval_data / test_data say otherwise. chat_template=True sends each prompt as a user turn
    through the tokenizer's chat template (instruct models). lr defaults by method (full 5e-5, LoRA 2e-4, soft prompt 3e-2).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method != "full" and strategy == "fsdp":
        raise ValueError("FSDP is for full fine-tuning of models that do not fit one process; "
                         "LoRA and prompt tuning run data-parallel with strategy='ddp'")
    info = distributed.setup(device)
    seed_everything(seed)
    model_path = None
    if isinstance(model, (str, Path)):
        from gencycle import load_model, load_tokenizer
        model_path = str(model)
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model, dtype=dtype, device=info.device)
    elif tokenizer is None:
        raise ValueError("pass tokenizer= with a model object (a model path loads its own tokenizer)")
    model = model.to(info.device)
    base_config = model.config
    arch = base_config.architecture
    if arch == "encoder":
        raise ValueError("instruction fine-tuning needs a decoder or encoder-decoder model, not an encoder-only one")
    max_length = min(max_length, base_config.max_position_embeddings) if base_config.position != "relative" \
        else max_length

    is_folder = isinstance(data, (str, Path)) and (str(data) == "shipped" or Path(data).is_dir())
    train_pairs = load_pairs(data, "train" if is_folder else None, template)
    eval_pairs = load_pairs(eval_data, template=template) if eval_data is not None else _split(data, "validation")
    test_pairs = load_pairs(test_data, template=template) if test_data is not None else _split(data, "test")
    test_pairs = (test_pairs or [])[:rouge_examples]
    if chat_template:
        train_pairs, eval_pairs, test_pairs = (chat_pairs(p, tokenizer) if p else p
                                               for p in (train_pairs, eval_pairs, test_pairs))
    examples = tokenize(train_pairs, tokenizer, arch, max_length, add_special_tokens=not chat_template)
    if packing and arch == "decoder":
        examples = pack(examples, max_length)
    eval_examples = (tokenize(eval_pairs, tokenizer, arch, max_length, add_special_tokens=not chat_template)
                     if eval_pairs else None)
    general = _load_texts(general_text) if general_text is not None else None

    from gencycle.evaluation import perplexity, rouge
    result_extra: dict = {}
    if info.is_main:
        if test_pairs:
            before = _generate(model, tokenizer, [p.prompt for p in test_pairs], max_new_tokens)
            result_extra["before"] = before
            result_extra["rouge_before"] = rouge(before, [p.completion.strip() for p in test_pairs])
        if general and arch == "decoder":
            result_extra["perplexity_before"] = perplexity(model, tokenizer, general, max_length=max_length)
    info.barrier()

    model = _apply_method(model, method, tokenizer, lora_rank=lora_rank, lora_alpha=lora_alpha,
                          lora_dropout=lora_dropout, target=target, num_virtual_tokens=num_virtual_tokens,
                          prompt_init=prompt_init, prompt_init_text=prompt_init_text, seed=seed).to(info.device)
    out_dir = Path(out) if out is not None else None
    config = TrainConfig(max_steps=max_steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                         lr=lr or DEFAULT_LR[method], weight_decay=weight_decay, warmup_steps=warmup_steps,
                         schedule=schedule, max_grad_norm=max_grad_norm, precision=precision, seed=seed,
                         eval_every=eval_every, checkpoint_every=checkpoint_every, out_dir=str(out_dir) if out_dir
                         else None, strategy=strategy, progress=progress, save_trainable_only=True)
    trainer = Trainer(model, config, examples, eval_data=eval_examples,
                      collate_fn=collator_for(base_config, tokenizer), device=info.device)
    eval_before = trainer.evaluate() if eval_examples else None
    monitor = MemoryMonitor(info.device).start()
    history = trainer.train(resume=resume)
    monitor.stop()
    eval_after = trainer.evaluate() if eval_examples else None

    result = FinetuneResult(method, out_dir, count_parameters(trainer.module), trainer.train_seconds,
                            monitor.peak_bytes, monitor.kind, history, eval_before, eval_after,
                            model=None)
    trained = _plain_model(trainer, info)  # collective under FSDP
    if info.is_main:
        if test_pairs:
            after = _generate(trained, tokenizer, [p.prompt for p in test_pairs], max_new_tokens)
            references = [p.completion.strip() for p in test_pairs]
            result.rouge_before, result.rouge_after = result_extra["rouge_before"], rouge(after, references)
            result.samples = [{"prompt": p.prompt, "reference": r, "before": b, "after": a}
                              for p, r, b, a in zip(test_pairs, references, result_extra["before"], after)]
        if "perplexity_before" in result_extra:
            result.perplexity_before = result_extra["perplexity_before"]
            result.perplexity_after = perplexity(trained, tokenizer, general, max_length=max_length)
        if out_dir is not None:
            _save(trained, method, tokenizer, out_dir, model_path)
            (out_dir / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    result.model = trained
    info.barrier()
    return result


def _plain_model(trainer, info) -> torch.nn.Module | None:
    """The trained model as one ordinary module on the main process (FSDP shards are gathered)."""
    if trainer.strategy != "fsdp":
        return trainer.module
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from gencycle.model import Transformer
    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    model = Transformer(trainer.module.config)
    model.load_state_dict(full, strict=False)
    model.tie_weights()
    return model.to(info.device)


def _save(model, method: str, tokenizer, out_dir: Path, base_name: str | None) -> None:
    """The result in the formats the ecosystem loads: HF model folder, or PEFT adapter folder."""
    if method == "full":
        model.save_pretrained(out_dir / "model")
        tokenizer.save_pretrained(out_dir / "model")
    else:
        from gencycle.adapters import save_adapter
        save_adapter(model, out_dir / "adapter", base_model_name_or_path=base_name)
