"""`GenerationConfig`: every inference-time parameter of a playground, checked on creation.

    GenerationConfig(max_new_tokens=64, do_sample=True, temperature=0.7, top_p=0.9, seed=0)
    GenerationConfig.from_pretrained("path/to/model")      # its generation_config.json
    config.replace(num_beams=4)                             # a new, re-validated config

Greedy decoding is the default; `do_sample=True` samples; `num_beams > 1` runs beam search.
Off-values: top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
frequency_penalty=0.0, no_repeat_ngram_size=0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

FILE_NAME = "generation_config.json"


def _integer(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(name: str, value, allowed: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value) or not ok(value):
        raise ValueError(f"{name} must be a number {allowed}, got {value!r}")


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick the next tokens. Frozen: change values with `replace(**changes)`."""

    max_new_tokens: int = 256          # tokens to generate at most (>= 0)
    min_new_tokens: int = 0            # EOS is blocked until this many tokens are generated
    do_sample: bool = False            # False: greedy (or beam search); True: random sampling
    temperature: float = 1.0           # >= 0; logits / temperature before sampling (0 = greedy)
    top_k: int = 0                     # sample among the k most likely tokens (0 = all)
    top_p: float = 1.0                 # nucleus: the smallest set whose probability reaches top_p, (0, 1]
    min_p: float = 0.0                 # drop tokens less likely than min_p x the most likely one's, [0, 1]
    repetition_penalty: float = 1.0    # > 0; > 1 discourages tokens already in the sequence (CTRL paper)
    presence_penalty: float = 0.0      # OpenAI's: subtracted from the logit of every token generated so far
    frequency_penalty: float = 0.0     # OpenAI's: subtracted once per time a token was generated so far
    no_repeat_ngram_size: int = 0      # forbid repeating any n-gram of this size (0 = off)
    num_beams: int = 1                 # > 1: beam search
    length_penalty: float = 1.0        # beam scores are divided by length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False (heuristic) or "never"
    num_return_sequences: int = 1      # sequences per prompt (<= num_beams for beam search)
    stop: tuple[str, ...] = ()         # strings that end generation; they are not part of the text
    eos_token_id: int | tuple[int, ...] | None = None  # None: the model's
    pad_token_id: int | None = None    # fills finished rows; None: the model's (or its EOS)
    seed: int | None = None            # seeds the sampler; None: a fresh random seed per call

    def __post_init__(self):
        _integer("max_new_tokens", self.max_new_tokens, 0)
        _integer("min_new_tokens", self.min_new_tokens, 0)
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {self.do_sample!r}")
        _number("temperature", self.temperature, ">= 0 (0 means greedy)", lambda v: v >= 0 and v != math.inf)
        _integer("top_k", self.top_k, 0)
        _number("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        _number("min_p", self.min_p, "in [0, 1]", lambda v: 0 <= v <= 1)
        _number("repetition_penalty", self.repetition_penalty, "> 0 (1.0 = off)", lambda v: 0 < v < math.inf)
        _number("presence_penalty", self.presence_penalty, "(finite)", math.isfinite)
        _number("frequency_penalty", self.frequency_penalty, "(finite)", math.isfinite)
        _integer("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        _integer("num_beams", self.num_beams, 1)
        _number("length_penalty", self.length_penalty, "(finite)", math.isfinite)
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        _integer("num_return_sequences", self.num_return_sequences, 1)
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("num_beams > 1 with do_sample=True (beam sampling) is not supported: "
                             "use num_beams=1 to sample, or do_sample=False for beam search")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences must be in [1, num_beams={self.num_beams}] for beam search, "
                             f"got {self.num_return_sequences}")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences != 1:
            raise ValueError(f"num_return_sequences must be 1 for greedy decoding (got {self.num_return_sequences}); "
                             "set do_sample=True or num_beams >= num_return_sequences")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if stop is None or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be a non-empty string or a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        eos = self.eos_token_id
        if eos is not None:
            eos = (eos,) if isinstance(eos, Integral) and not isinstance(eos, bool) else tuple(eos)
            for token in eos:
                _integer("eos_token_id", token, 0)
            object.__setattr__(self, "eos_token_id", eos)
        if self.pad_token_id is not None:
            _integer("pad_token_id", self.pad_token_id, 0)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, Integral)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    # ---- derived -----------------------------------------------------------------------
    @property
    def greedy(self) -> bool:
        """Picks the arg-max token each step: no sampling, or sampling at temperature 0."""
        return not self.do_sample or self.temperature == 0

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.eos_token_id or ())

    # ---- changing and files ----------------------------------------------------------------
    def replace(self, **changes) -> "GenerationConfig":
        """A copy with some fields changed (validated again). Unknown names raise ValueError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown generation parameter(s) {', '.join(unknown)}; known: "
                             f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["stop"] = list(self.stop)
        if self.eos_token_id is not None:
            values["eos_token_id"] = list(self.eos_token_id)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "GenerationConfig":
        """Known fields only (a Hugging Face file has many more); None means "not set"."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names and v is not None}
        if "stop" not in known and values.get("stop_strings"):  # the transformers name
            known["stop"] = values["stop_strings"]
        return cls(**known)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "GenerationConfig":
        """Read `generation_config.json` from a model folder (or the file itself)."""
        path = Path(path)
        file = path / FILE_NAME if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"no {FILE_NAME} in {str(path)!r}")
        try:
            return cls.from_dict(json.loads(file.read_text()))
        except ValueError as error:
            raise ValueError(f"{file}: {error}") from error

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / FILE_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return directory / FILE_NAME
