"""Instruction data: records -> (prompt, completion) -> token ids -> padded batches.

    records (JSONL / CSV / list of dicts)          one of three kinds, told apart by their fields:
        {"instruction", "input"?, "output"}         Alpaca style: the "instruction[-input]" templates
        {"prompt", "completion"}                    used as given
        {"dialogue", "summary"}                     DialogSum: the "dialogsum" template
    -> Pair(prompt, completion)                     a template (named or given) writes the prompt
    -> Example(input_ids, labels)                   decoder: prompt + completion + EOS, labels -100
                                                    on the prompt; encoder-decoder: prompt -> completion + EOS
    -> Collator                                     right-padded tensors; T5's decoder_input_ids are the
                                                    labels shifted right behind decoder_start_token_id

`EpochSampler` fixes the order of examples for a seed, shards it across
processes, and remembers how far it got, so a resumed run sees the same batches.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from gencycle.data.files import read_rows
from gencycle.prompting.templates import PromptTemplate, template as named_template

IGNORE_INDEX = -100  # label of a token that is not scored (prompt, padding)

# kind -> (field the template fills, field holding the answer, accepted spellings of the answer field)
KINDS = {
    "instruction": ("instruction", "output", ("output", "response")),
    "prompt": ("prompt", "completion", ("completion",)),
    "dialogue": ("dialogue", "summary", ("summary", "summary1")),
}


class DataError(ValueError):
    """A dataset is empty, unreadable, or has a record without the fields its kind needs."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    completion: str


@dataclass(frozen=True)
class Example:
    input_ids: list[int]  # decoder: prompt + completion + EOS; encoder-decoder: the encoder input
    labels: list[int]     # decoder: aligned with input_ids, -100 on the prompt; encoder-decoder: target ids

    def __len__(self) -> int:
        return len(self.input_ids)


# ------------------------------------------------------------------ reading records
def read_records(path: str | Path, split: str | None = None) -> list[dict]:
    """Records of a .jsonl / .csv file, or of the `split` file in a folder of split files."""
    path = Path(path).expanduser()
    if path.is_dir():
        from gencycle.data.dialogsum import split_file
        path = split_file(path, split or "train")
    if not path.exists():
        raise FileNotFoundError(f"no data file at {str(path)!r}")
    records = read_rows(path, DataError)
    if not records:
        raise DataError(f"{path}: the dataset is empty (no records)")
    return records


def record_kind(record: dict, source: str = "data") -> str:
    for kind, (field, _, _) in KINDS.items():
        if field in record:
            return kind
    raise DataError(f"{source}: record 1 has fields {sorted(record)}; expected instruction/output, "
                    "prompt/completion or dialogue/summary")


def to_pairs(records: list[dict], template: str | PromptTemplate | None = None, source: str = "data") -> list[Pair]:
    """Format records into (prompt, completion) text; the first record decides the kind.

    Without a template: instruction records use "instruction" / "instruction-input",
    dialogue records "dialogsum", prompt records their prompt as is. A missing or
    empty answer field is an error naming the record (1-based).
    """
    if not records:
        raise DataError(f"{source}: the dataset is empty (no records)")
    records = [r.__dict__ if hasattr(r, "__dataclass_fields__") else r for r in records]  # DialogueExample
    kind = record_kind(records[0], source)
    field, answer, spellings = KINDS[kind]
    if isinstance(template, str):
        template = named_template(template)
    pairs = []
    for number, record in enumerate(records, start=1):
        output = next((record[s] for s in spellings if record.get(s) not in (None, "")), None)
        if output is None:
            raise DataError(f"{source}: record {number} has no {answer!r} field (a {kind} record needs "
                            f"{field!r} and {answer!r}); its fields: {sorted(record)}")
        if not str(record.get(field) or "").strip():
            raise DataError(f"{source}: record {number} has an empty {field!r} field")
        prompt = _prompt(kind, record, template, source, number)
        # "...Summary:" + " answer"; a prompt ending in a newline or space takes the answer as is
        separator = "" if not prompt or prompt[-1].isspace() else " "
        pairs.append(Pair(prompt, separator + str(output).strip()))
    return pairs


def _prompt(kind: str, record: dict, template: PromptTemplate | None, source: str, number: int) -> str:
    if template is None:
        if kind == "prompt":
            return str(record["prompt"])
        if kind == "dialogue":
            template = named_template("dialogsum")
        else:
            has_input = str(record.get("input") or record.get("context") or "").strip()
            template = named_template("instruction-input" if has_input else "instruction")
    values = {k: str(v).strip() for k, v in record.items() if v is not None}
    values.setdefault("input", values.get("context", ""))
    try:
        return template.format(**values)
    except KeyError as e:
        raise DataError(f"{source}: record {number}: {e}") from None


def load_pairs(data, split: str | None = None, template: str | PromptTemplate | None = None) -> list[Pair]:
    """Pairs from a file, a folder of splits, "shipped" (the project's dialogue set) or a list of records."""
    if isinstance(data, (str, Path)):
        if str(data) == "shipped":
            from gencycle.data.dialogsum import SHIPPED_DIR
            data = SHIPPED_DIR
        return to_pairs(read_records(data, split), template, source=str(data))
    return to_pairs(list(data), template)


# ------------------------------------------------------------------ tokenizing
def tokenize(pairs: list[Pair], tokenizer, architecture: str = "decoder", max_length: int = 512,
             eos_token_id: int | None = None, add_special_tokens: bool = True) -> list[Example]:
    """Token ids with labels; EOS ends every completion so the model learns to stop.

    Decoder: input_ids = prompt + completion + EOS, labels -100 on the prompt. A pair
    longer than `max_length` loses the start of its prompt (the end, next to the answer,
    is kept). Encoder-decoder: input_ids = prompt (cut to max_length), labels = completion + EOS.
    add_special_tokens=False for prompts that already hold them (chat-templated text).
    """
    if not pairs:
        raise DataError("the dataset is empty (no records)")
    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer names no EOS token: pass eos_token_id=")
    examples, cut = [], 0
    for pair in pairs:
        completion = tokenizer.encode(pair.completion.strip() if architecture == "encoder-decoder"
                                      else pair.completion, add_special_tokens=False)
        completion = (completion + [eos])[:max_length]
        if completion[-1] != eos:
            completion[-1] = eos
        prompt = tokenizer.encode(pair.prompt, add_special_tokens=add_special_tokens)
        if architecture == "encoder-decoder":
            cut += len(prompt) > max_length
            examples.append(Example(prompt[:max_length], completion))
            continue
        room = max_length - len(completion)
        if len(prompt) > room:
            cut += 1
            prompt = prompt[len(prompt) - room:] if room > 0 else []
        examples.append(Example(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion))
    if cut:
        warnings.warn(f"{cut} of {len(pairs)} examples were longer than max_length={max_length} and were cut")
    return examples


def chat_pairs(pairs: list[Pair], tokenizer) -> list[Pair]:
    """Each prompt as a user turn through the tokenizer's chat template (instruct models); the
    completion is the assistant's reply, and the template's end-of-turn token is the EOS."""
    return [Pair(tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True),
                 p.completion.strip()) for p in pairs]


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Concatenate whole decoder examples into rows of at most `max_length` tokens (fewer pad tokens).

    Examples keep their order and are never split; tokens of one example can attend to
    the examples before it in the row, as in the usual (unmasked) packing.
    """
    rows, ids, labels = [], [], []
    for example in examples:
        if ids and len(ids) + len(example) > max_length:
            rows.append(Example(ids, labels))
            ids, labels = [], []
        ids, labels = ids + example.input_ids, labels + example.labels
    if ids:
        rows.append(Example(ids, labels))
    return rows


# ------------------------------------------------------------------ batches
class Collator:
    """Examples -> a batch of right-padded (B, T) tensors.

    Decoder: input_ids, attention_mask, labels. Encoder-decoder adds decoder_input_ids
    (B, L): the labels shifted right behind `decoder_start_token_id`, padding as pad.
    """

    def __init__(self, pad_token_id: int, decoder_start_token_id: int | None = None):
        self.pad_token_id = pad_token_id
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        label_width = width if self.decoder_start_token_id is None else max(len(e.labels) for e in examples)
        labels = torch.full((len(examples), label_width), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(examples):
            input_ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
            attention_mask[row, :len(e.input_ids)] = 1
            labels[row, :len(e.labels)] = torch.tensor(e.labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.decoder_start_token_id is not None:
            batch["decoder_input_ids"] = shift_right(labels, self.decoder_start_token_id, self.pad_token_id)
        return batch


def shift_right(labels: torch.Tensor, start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """(B, L) labels -> decoder inputs (B, L): start token, then labels[:, :-1]; -100 becomes pad."""
    shifted = torch.full_like(labels, start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


def collator_for(config, tokenizer=None) -> Collator:
    """The collator a model needs (its config gives the architecture and special ids)."""
    pad = config.pad_token_id
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = config.eos_token_ids[0] if config.eos_token_ids else 0
    if config.architecture == "encoder-decoder":
        start = config.decoder_start_token_id if config.decoder_start_token_id is not None else pad
        return Collator(pad, start)
    return Collator(pad)


class EpochSampler:
    """Batches of example indices in a seeded order per epoch, split across processes.

    Epoch e's order is a permutation drawn from seed + e. Global batch k holds
    order[k*G : (k+1)*G] with G = batch_size * world_size, and rank r takes the r-th
    contiguous part of it, so N processes with batch B see what one process with batch
    N*B sees. The order is padded (wrapping round) to a multiple of world_size.
    `position` counts the batches taken this epoch; it and `epoch` are the resumable state.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if num_examples <= 0:
            raise DataError("the dataset is empty (no examples)")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_examples, self.batch_size, self.seed, self.shuffle = num_examples, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        padded = -(-self.num_examples // self.world_size) * self.world_size
        return -(-padded // (self.batch_size * self.world_size))

    def _order(self) -> list[int]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        else:
            order = list(range(self.num_examples))
        padded = -(-self.num_examples // self.world_size) * self.world_size
        order = (order * (padded // self.num_examples + 1))[:padded]
        self._cached = (self.epoch, order)
        return order

    def next_batch(self) -> list[int]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        order, G = self._order(), self.batch_size * self.world_size
        chunk = order[self.position * G:(self.position + 1) * G]
        share = len(chunk) // self.world_size
        self.position += 1
        return chunk[self.rank * share:(self.rank + 1) * share]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_examples": self.num_examples, "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_examples", "batch_size", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint was taken with {key}={state[key]}, this run has "
                                 f"{getattr(self, key)}: resume with the same data and batch layout")
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
