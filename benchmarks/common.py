"""What the benchmarks share: the two models, real-text prompts, timing, table printing.

Both models are written once as a Hugging Face folder, which gencycle and `transformers`
then load, so both run the very same weights:

- SmolLM2-135M-Instruct: the packaged GGUF file, loaded by gencycle and saved back in the HF layout.
- GPT-2-124M-shaped: `transformers.GPT2LMHeadModel(GPT2Config())` with seeded random weights.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import torch

import gencycle
from gencycle.data.dialogsum import load_shipped

SMOLLM2 = "smollm2-135m-instruct"
_TMP = Path(tempfile.mkdtemp(prefix="gencycle-bench-"))


def smollm2_folder() -> Path:
    folder = _TMP / "smollm2-135m"
    if not (folder / "config.json").exists():
        gencycle.save_pretrained(gencycle.load_model(SMOLLM2, device="cpu"), folder)
    return folder


def gpt2_folder() -> Path:
    folder = _TMP / "gpt2-124m-random"
    if not (folder / "config.json").exists():
        import transformers
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(folder)
    return folder


def dialogue_text(split: str = "test") -> list[str]:
    """The shipped chitchat dialogues (real conversational English)."""
    return [example.dialogue for example in load_shipped(split)]


def text_prompts(batch: int, length: int) -> torch.Tensor:
    """(batch, length) token ids of SmolLM2's tokenizer, each row from a different dialogue."""
    tokenizer = gencycle.load_tokenizer(SMOLLM2)
    text = "\n\n".join(dialogue_text())
    ids = tokenizer.encode(text, add_special_tokens=False)
    stride = (len(ids) - length) // max(batch, 1)
    return torch.tensor([ids[i * stride:i * stride + length] for i in range(batch)])


def random_prompts(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def best_time(fn, repeat: int) -> tuple[float, object]:
    """The fastest of `repeat` runs (the machine's noise only ever adds time), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def free() -> None:
    gc.collect()


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (printed as is, and pasted into RESULTS.md)."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    import platform
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")
