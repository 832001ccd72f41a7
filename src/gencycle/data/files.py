"""Reading the rows of a .csv or .jsonl data file, with errors that name the row."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path


def read_rows(path: Path, error: type[Exception] = ValueError) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL (.json also accepted) file, as dicts.

    A bad JSON line raises `error` naming the file and the row (counted from 1, blank lines skipped);
    so does text that is not UTF-8 (naming the line).
    """
    if path.is_dir():
        raise error(f"{str(path)!r} is a folder; expected a .csv or .jsonl file")
    if path.suffix not in (".csv", ".jsonl", ".json"):
        raise error(f"{str(path)!r}: expected a .csv or .jsonl file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig" if path.suffix == ".csv" else "utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}); convert the file, "
                    "e.g. with iconv -t utf-8") from None
    if path.suffix == ".csv":
        try:
            return list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise error(f"{path}: not a readable CSV file ({e})") from None
    rows = []
    for line in filter(str.strip, text.splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}: row {len(rows) + 1}: bad JSON line ({e.msg})") from None
        if not isinstance(row, dict):
            raise error(f"{path}: row {len(rows) + 1}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
