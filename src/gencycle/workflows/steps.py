"""The steps a training workflow is made of, shared by fine-tuning and the workflows after it.

    loaded = load(model, tokenizer, run)              model + tokenizer on this process's device
    before = measure(model, tokenizer, test, texts)   ROUGE on test prompts, perplexity on general text
    ... the workflow adapts the model and builds its Trainer ...
    trained = train(trainer, resume)                  eval loss before / after, history, time, peak memory
    model = gather(trainer, loaded.dist)              one ordinary module on the main process (FSDP)
    after = measure(model, ...);  save(model, ...)    HF model folder or PEFT adapter folder
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from gencycle.errors import OptionError, check_input
from gencycle.training import distributed
from gencycle.training.loop import Trainer
from gencycle.training.report import MemoryMonitor, ParameterCount, count_parameters

from .config import RunConfig


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: Any
    path: str | None              # where the model came from (an adapter's base_model_name_or_path)
    dist: distributed.Dist


def load(model: str | Path | torch.nn.Module, tokenizer, run: RunConfig) -> Loaded:
    """A model path / packaged name loads with its tokenizer; a model object needs `tokenizer`."""
    dist = distributed.setup(run.device)
    path = None
    if isinstance(model, (str, Path)):
        from gencycle import load_model, load_tokenizer
        path = str(model)
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model, dtype=run.dtype, device=dist.device)
    elif tokenizer is None:
        raise ValueError("pass tokenizer= with a model object (a model path loads its own tokenizer)")
    return Loaded(model.to(dist.device), tokenizer, path, dist)


def load_texts(texts: str | Path | Sequence[str], option: str = "general_text") -> list[str]:
    """General text: a list of strings, or a UTF-8 file of paragraphs separated by blank lines."""
    if isinstance(texts, (str, Path)):
        path = check_input(texts, option, "file")
        try:
            paragraphs = path.read_text(encoding="utf-8").split("\n\n")
        except UnicodeDecodeError as error:
            raise OptionError(option, f"{str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})",
                              message=f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        texts = [p.strip() for p in paragraphs if p.strip()]
        if not texts:
            raise OptionError(option, "", message=f"{path}: no text in the file")
    return list(texts)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8,
             desc: str | None = None) -> list[str]:
    """Greedy completions, stripped; the model's train / eval mode is left as it was.
    desc: show a progress bar over the batches with this title."""
    from gencycle.generation import LLM
    was_training = model.training
    model.eval()
    llm, out = LLM(model, tokenizer), []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
        out += llm.generate(prompts[start:start + batch_size], max_new_tokens=max_new_tokens, do_sample=False)
    model.train(was_training)
    return [text.strip() for text in out]


@dataclass
class Measurement:
    predictions: list[str] = field(default_factory=list)  # greedy completions of the test prompts
    rouge: dict | None = None
    perplexity: float | None = None                       # on general text: the forgetting check


def measure(model, tokenizer, test_pairs, general_texts: list[str] | None, *, max_new_tokens: int,
            max_length: int, when: str | None = None) -> Measurement:
    """ROUGE of greedy completions of `test_pairs` (prompt, completion) against their completions;
    perplexity on `general_texts` (decoders only). when ("before" / "after" training): show
    progress bars titled with it."""
    from gencycle.evaluation import perplexity, rouge
    result = Measurement()
    if test_pairs:
        desc = f"ROUGE prompts {when}" if when else None
        result.predictions = generate(model, tokenizer, [p.prompt for p in test_pairs], max_new_tokens, desc=desc)
        result.rouge = rouge(result.predictions, [p.completion.strip() for p in test_pairs])
    if general_texts and model.config.architecture == "decoder":
        result.perplexity = perplexity(model, tokenizer, general_texts, max_length=max_length,
                                       progress=when is not None)
    return result


@dataclass
class Trained:
    history: list[dict]
    parameters: ParameterCount
    seconds: float
    peak_memory_bytes: int
    memory_kind: str                     # "rss" (CPU) or "cuda_max_allocated"
    eval_loss_before: float | None
    eval_loss_after: float | None


def train(trainer: Trainer, resume: bool | str | Path = False) -> Trained:
    """`trainer.train()` under a memory monitor, with the eval loss before and after (when it has eval data)."""
    has_eval = trainer.eval_data is not None and len(trainer.eval_data) > 0
    before = trainer.evaluate() if has_eval else None
    monitor = MemoryMonitor(trainer.dist.device).start()
    history = trainer.train(resume=resume)
    monitor.stop()
    after = trainer.evaluate() if has_eval else None
    return Trained(history, count_parameters(trainer.module), trainer.train_seconds, monitor.peak_bytes,
                   monitor.kind, before, after)


def gather(trainer: Trainer, dist: distributed.Dist) -> torch.nn.Module | None:
    """The trained model as one ordinary module on the main process (FSDP shards are gathered:
    every process must call this); None on the other processes under FSDP."""
    if trainer.strategy != "fsdp":
        return trainer.module
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from gencycle.model import Transformer
    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_main:
        return None
    model = Transformer(trainer.module.config)
    model.load_state_dict(full, strict=False)
    model.tie_weights()
    return model.to(dist.device)


def save(model, tokenizer, out_dir: Path, *, adapter: bool, base_name: str | None = None) -> Path:
    """In the formats the ecosystem loads: out_dir/model (HF model folder with the tokenizer), or
    out_dir/adapter (PEFT adapter folder: LoRA or a soft prompt)."""
    if adapter:
        from gencycle.adapters import save_adapter
        return save_adapter(model, out_dir / "adapter", base_model_name_or_path=base_name)
    from gencycle.checkpoints import save_pretrained
    save_pretrained(model, out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    return out_dir / "model"


def write_report(out_dir: Path, report: dict) -> Path:
    path = out_dir / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
