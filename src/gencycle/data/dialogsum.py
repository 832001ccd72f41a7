"""Dialogue-summarization data in DialogSum's format.

DialogSum (Chen et al., 2021) stores one dialogue per record with the columns
`id`, `dialogue`, `summary`, `topic`, as CSV (the Hugging Face copy) or JSONL
(the original release, which names the id column `fname` and gives the test
split three references `summary1..3`; we read `summary1` as the reference).
A dataset is either one file or a folder of split files: `train`, `validation`
(`dev` is accepted as its alias) and `test`, named `train.csv`,
`dialogsum.train.jsonl` and so on.

Bad records raise `DialogSumFormatError` naming the file, the row (the 1-based
record number, header not counted) and the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .files import read_rows

# The dataset shipped with the project (dialogues from chitchat-dataset, summaries
# written for gencycle; see its data card): package data next to this module, so it
# is there in a wheel as in a source checkout.
SHIPPED_DIR = Path(__file__).resolve().parent / "chitchat-dialogsum"

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation"}
COLUMN_ALIASES = {"fname": "id", "summary1": "summary", "topic1": "topic"}
REQUIRED = ("id", "dialogue", "summary")  # `topic` is optional: "" when absent
SUFFIXES = (".csv", ".jsonl")


class DialogSumFormatError(ValueError):
    """A record of a DialogSum-format file is missing a column or has an empty one."""


@dataclass(frozen=True)
class DialogueExample:
    """One dialogue with its human reference summary."""
    id: str
    dialogue: str
    summary: str
    topic: str = ""


def load_dialogsum(path: str | Path, split: str | None = None) -> list[DialogueExample]:
    """Read DialogSum-format records from a CSV/JSONL file or a folder of split files.

    `split` picks the split file in a folder (required there); for a single file
    it must be None.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_file(split_file(path, split))
    if not path.exists():
        raise FileNotFoundError(f"no dialogue-summarization data at {str(path)!r}")
    if split is not None:
        raise ValueError(f"split={split!r} given, but {str(path)!r} is a single file, not a folder of splits")
    return _read_file(path)


def load_shipped(split: str) -> list[DialogueExample]:
    """The project's own dataset (chitchat dialogues, project-written summaries)."""
    if not SHIPPED_DIR.is_dir():
        raise FileNotFoundError(f"the shipped dataset is not at {str(SHIPPED_DIR)!r}: this install of gencycle "
                                "lacks its package data (reinstall it)")
    return load_dialogsum(SHIPPED_DIR, split)


def split_file(folder: Path, split: str | None) -> Path:
    """The file holding `split` in a folder of split files."""
    found = {}
    for file in sorted(folder.iterdir()):
        if file.suffix in SUFFIXES:
            name = file.stem.rsplit(".", 1)[-1].lower()  # "dialogsum.dev" -> "dev"
            name = SPLIT_ALIASES.get(name, name)
            if name in SPLITS:
                found.setdefault(name, file)
    if split is None:
        choices = sorted(found) or list(SPLITS)
        raise ValueError(f"{str(folder)!r} is a folder of splits: pass split= one of {choices}")
    want = SPLIT_ALIASES.get(split.lower(), split.lower())
    if want not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS} (or 'dev')")
    if want not in found:
        raise FileNotFoundError(
            f"no {want!r} split in {str(folder)!r}: expected {want}.csv or {want}.jsonl (found: {sorted(found) or 'none'})")
    return found[want]


def _read_file(path: Path) -> list[DialogueExample]:
    rows = read_rows(path, DialogSumFormatError)
    return [_example(path, number, row) for number, row in enumerate(rows, start=1)]


def _example(path: Path, number: int, row: dict) -> DialogueExample:
    for alias, column in COLUMN_ALIASES.items():
        if column not in row and alias in row:
            row[column] = row[alias]
    for column in REQUIRED:
        if row.get(column) is None:
            raise DialogSumFormatError(f"{path}: row {number}: missing column {column!r}")
    for column in ("dialogue", "summary"):
        if not str(row[column]).strip():
            raise DialogSumFormatError(f"{path}: row {number}: empty {column!r}")
    return DialogueExample(id=str(row["id"]), dialogue=str(row["dialogue"]).strip(),
                           summary=str(row["summary"]).strip(), topic=str(row.get("topic") or ""))
