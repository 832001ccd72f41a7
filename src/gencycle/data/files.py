"""Reading the rows of a .csv or .jsonl data file, with errors that name the row."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def read_rows(path: Path, error: type[Exception] = ValueError) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL (.json also accepted) file, as dicts.

    A bad JSON line raises `error` naming the file and the row (counted from 1, blank lines skipped).
    """
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix not in (".jsonl", ".json"):
        raise error(f"{str(path)!r}: expected a .csv or .jsonl file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in filter(str.strip, f):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}: row {len(rows) + 1}: bad JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}: row {len(rows) + 1}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows
