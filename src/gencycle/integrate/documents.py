"""The documents of a folder: .txt, .md and .jsonl files (the shipped dialogues among them).

    files = list_files("notes/")                 # [DocumentFile(source="a.md", path=...), ...]
    docs, problems = read_file(files[0])         # Documents, and why anything was skipped

A .txt or .md file is one document, its lines numbered from 1. A .jsonl file is one document
per record: the text is the record's first string field among TEXT_FIELDS ("text", "content",
"dialogue", ...), its name the record's "id" (else "line N"), its line the record's line in the
file. A file that is not UTF-8 is skipped with a problem that names it; so is a JSONL line that
is not a JSON object with a text field. `SHIPPED` names the shipped dialogues
(data/chitchat-dialogsum/dialogues.jsonl), which `gencycle rag index shipped` reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".txt", ".md", ".jsonl")
TEXT_FIELDS = ("text", "content", "dialogue", "body", "document", "passage")
SHIPPED = "shipped"


@dataclass(frozen=True)
class DocumentFile:
    """A file to index: `source` is its path relative to the documents folder (POSIX), its name in the index."""
    source: str
    path: Path


@dataclass(frozen=True)
class Document:
    """A text to chunk. first_line: the file line where `text` starts (a JSONL record: its line);
    record: the JSONL record's id, None for a .txt / .md file."""
    source: str
    text: str
    first_line: int = 1
    record: str | None = None


def shipped_dialogues() -> Path:
    from ..data.dialogsum import SHIPPED_DIR
    return SHIPPED_DIR / "dialogues.jsonl"


def resolve_documents(path: str | Path) -> Path:
    """The folder or file `path` names ("shipped": the shipped dialogues), checked to exist."""
    if str(path) == SHIPPED:
        path = shipped_dialogues()
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no documents folder or file at {str(path)!r}")
    return path


def list_files(path: str | Path) -> list[DocumentFile]:
    """The .txt / .md / .jsonl files under a folder (recursively, hidden ones skipped), or the one file
    `path` names. An empty folder, or one without such files, is an error that says so."""
    root = resolve_documents(path)
    if root.is_file():
        if root.suffix.lower() not in SUFFIXES:
            raise ValueError(f"{str(root)!r} is not a {', '.join(SUFFIXES)} file")
        return [DocumentFile(root.name, root)]
    files = [DocumentFile(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*"))
             if p.is_file() and p.suffix.lower() in SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        what = "is empty" if not any(root.iterdir()) else f"has no {', '.join(SUFFIXES)} files"
        raise ValueError(f"the documents folder {str(root)!r} {what}")
    return files


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(file: DocumentFile, data: bytes | None = None) -> tuple[list[Document], list[str]]:
    """The documents of one file, and the problems met (each names the file; the file or line is skipped)."""
    data = file.path.read_bytes() if data is None else data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return [], [f"skipped {file.source}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                    f"{error.start})"]
    text = text.removeprefix("\ufeff")
    if file.path.suffix.lower() != ".jsonl":
        return ([Document(file.source, text)] if text.strip() else []), []
    documents, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"skipped {file.source} line {number}: not JSON ({error.msg})")
            continue
        field = next((f for f in TEXT_FIELDS if isinstance(record, dict) and isinstance(record.get(f), str)), None)
        if field is None:
            problems.append(f"skipped {file.source} line {number}: no text field (one of {', '.join(TEXT_FIELDS)})")
            continue
        if record[field].strip():
            name = record.get("id", record.get("fname"))
            documents.append(Document(file.source, record[field], number,
                                      str(name) if name is not None else f"line {number}"))
    return documents, problems
