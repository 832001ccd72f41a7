"""Text corpora for pretraining: two named ones that reach a machine through packages, and your files.

    corpus = load_corpus("austen")               # Jane Austen's six novels, one document per chapter
    corpus = load_corpus("chitchat")             # 7,168 human chats, one document per conversation
    corpus = load_corpus(["notes.txt", "books/"])  # UTF-8 text files, .jsonl records, folders of them
    train, validation = corpus.split(0.05)       # lists of document texts, disjoint

    name        source                                                   documents  words
    austen      Debian's r-cran-janeaustenr (its R data file, read with   269        717,537
                the `rdata` package: no R needed); public domain
    chitchat    chitchat-dataset's dataset.json (PyPI), MIT               7,168      ~2.5M
    files       a .txt / .md file is one document; each string value of
                a .jsonl record is one; a folder gives its files (sorted, recursively)

Austen's lines are unwrapped into paragraphs (one per line, a blank line between them). A chat
turns into lines "A: ..." / "B: ..." (speakers lettered in order of appearance), one per turn.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gencycle.assets import package_dir

NAMES = ("austen", "chitchat")
TEXT_SUFFIXES = (".txt", ".md", ".text", ".jsonl")

AUSTEN_PACKAGE = "r-cran-janeaustenr"
AUSTEN_INSTALL = f"apt-get install {AUSTEN_PACKAGE}"
# R's library folders (Debian puts packages in site-library); R_LIBS* add the user's own
R_LIBRARIES = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library", "/usr/lib/R/library",
               "/usr/local/lib/R/library")
AUSTEN_NOVELS = {  # object name in the R data file -> title, in order of publication
    "sensesensibility": "Sense & Sensibility", "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion"}
CHAPTER = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\b", re.IGNORECASE)
CHITCHAT_PACKAGE = "chitchat_dataset"


@dataclass(frozen=True)
class Document:
    source: str                   # "Emma, CHAPTER III", a chat id, a file path (with a record number)
    text: str


@dataclass
class Corpus:
    """Documents of one corpus, and the prompts its samples start from."""
    name: str
    documents: list[Document]
    prompts: tuple[str, ...] = field(default=())   # what a decoder trained on it is asked to continue

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def words(self) -> int:
        return sum(len(d.text.split()) for d in self.documents)

    def split(self, validation_fraction: float = 0.05) -> tuple[list[str], list[str]]:
        """(train texts, validation texts), disjoint and the same on every call.

        With at least 2 / fraction documents, every k-th document (k = round(1 / fraction),
        starting at the k-th) is held out whole, so the validation text is spread over the corpus
        and shares no document with training. With fewer, each document's last `fraction` of
        characters (cut at a line break when one is near) is held out instead.
        """
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        texts = [d.text for d in self.documents]
        k = round(1 / validation_fraction)
        if len(texts) >= 2 * k:
            held = set(range(k - 1, len(texts), k))
            return ([t for i, t in enumerate(texts) if i not in held],
                    [t for i, t in enumerate(texts) if i in held])
        train, validation = [], []
        for text in texts:
            cut = _cut(text, 1 - validation_fraction)
            train.append(text[:cut])
            validation.append(text[cut:])
        return [t for t in train if t.strip()], [t for t in validation if t.strip()]


def _cut(text: str, share: float) -> int:
    """An index near share * len(text), moved to the closest line break within 2% of the text."""
    at = int(len(text) * share)
    window = max(1, len(text) // 50)
    before, after = text.rfind("\n", at - window, at), text.find("\n", at, at + window)
    candidates = [i for i in (before, after) if i >= 0]
    return min(candidates, key=lambda i: abs(i - at)) if candidates else at


# ------------------------------------------------------------------ the entry point
def load_corpus(source: str | Path | Sequence[str | Path], max_documents: int | None = None) -> Corpus:
    """A named corpus ("austen", "chitchat"), or files and folders of text (see the module docstring).

    A file that is missing, empty or not UTF-8 text is an error that names it; so is a folder
    without text files. `max_documents` keeps the first N documents (a quick try).
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise ValueError("no corpus given: name one (austen, chitchat) or give text files / folders")
    if len(sources) == 1 and str(sources[0]).lower() in NAMES and not Path(sources[0]).exists():
        corpus = {"austen": austen, "chitchat": chitchat}[str(sources[0]).lower()]()
    else:
        corpus = text_files(sources)
    if max_documents is not None:
        if max_documents <= 0:
            raise ValueError(f"max_documents must be positive, got {max_documents}")
        corpus.documents = corpus.documents[:max_documents]
    return corpus


# ------------------------------------------------------------------ Jane Austen
def austen_folder() -> Path:
    """The data folder of the installed janeaustenr R package, or an error that says how to install it."""
    extra = [p for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE") for p in os.environ.get(var, "").split(":") if p]
    searched = [Path(p) / "janeaustenr" / "data" for p in (*extra, *R_LIBRARIES)]
    for folder in searched:
        if (folder / "Rdata.rdb").is_file() and (folder / "Rdata.rdx").is_file():
            return folder
    raise FileNotFoundError(f"the 'austen' corpus needs Debian's {AUSTEN_PACKAGE} package (Jane Austen's novels "
                            f"as an R data file): run `{AUSTEN_INSTALL}` as root. Looked in "
                            f"{', '.join(str(f) for f in searched)}")


def austen_novels(folder: Path | None = None) -> dict[str, list[str]]:
    """{title: the novel's lines as the R package stores them}, in order of publication.

    The package keeps its data as an R lazy-load database: Rdata.rdx (an RDS file) gives each
    object's offset and length in Rdata.rdb, where each is a 4-byte length and a compressed
    serialized R object, which `rdata` parses.
    """
    try:
        import rdata
    except ImportError:
        raise ValueError("reading the 'austen' corpus needs the rdata package: "
                         "pip install rdata (or gencycle[pretrain])") from None
    folder = folder or austen_folder()
    with warnings.catch_warnings():  # rdata warns that a bare serialized object has no file header
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.conversion.convert(rdata.parser.parse_file(folder / "Rdata.rdx", extension=".rds"))
        database = (folder / "Rdata.rdb").read_bytes()
        novels = {}
        for name, title in AUSTEN_NOVELS.items():
            if name not in index["variables"]:
                raise ValueError(f"{folder / 'Rdata.rdx'} has no {name!r}: not the janeaustenr data this reads")
            offset, length = (int(v) for v in index["variables"][name])
            data = _inflate(database[offset:offset + length], folder / "Rdata.rdb")
            novels[title] = [str(line) for line in rdata.conversion.convert(rdata.parser.parse_data(data))]
    return novels


def _inflate(record: bytes, path: Path) -> bytes:
    """One object of an R lazy-load database: 4 bytes of length, then zlib (or, typed by a fifth
    byte, bzip2 / xz / no) compression."""
    if len(record) < 5:
        raise ValueError(f"{path}: truncated object")
    if record[4:6] in (b"\x78\x9c", b"\x78\x01", b"\x78\xda"):  # a zlib stream right after the length
        return zlib.decompress(record[4:])
    kind, body = record[4:5], record[5:]
    if kind == b"2":
        import bz2
        return bz2.decompress(body)
    if kind == b"X":
        import lzma
        return lzma.decompress(body)
    if kind == b"0":
        return body
    raise ValueError(f"{path}: unknown compression {kind!r}")


def paragraphs(lines: list[str]) -> list[str]:
    """Line-wrapped text -> paragraphs: the lines between blank lines joined by spaces."""
    out, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def austen() -> Corpus:
    """Jane Austen's six novels, one document per chapter (a novel's title page joins its first chapter)."""
    documents = []
    for title, lines in austen_novels().items():
        chapters: list[tuple[str, list[str]]] = [(f"{title}, front matter", [])]
        for line in lines:
            if CHAPTER.match(line):
                chapters.append((f"{title}, {line.strip()}", []))
            chapters[-1][1].append(line)
        if len(chapters) > 1:  # the title page before chapter 1 belongs to it
            front = chapters.pop(0)[1]
            chapters[0] = (chapters[0][0], front + chapters[0][1])
        documents += [Document(name, "\n\n".join(paragraphs(body))) for name, body in chapters]
    return Corpus("austen", [d for d in documents if d.text.strip()],
                  prompts=("It is a truth universally acknowledged", "\"My dear", "She was"))


# ------------------------------------------------------------------ chitchat
def chitchat() -> Corpus:
    """chitchat-dataset's 7,168 conversations, one document each: a line "A: ..." per turn."""
    import json
    root = package_dir(CHITCHAT_PACKAGE)
    path = root / "dataset.json" if root is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError("the 'chitchat' corpus needs the chitchat-dataset package: "
                                "pip install --no-deps chitchat-dataset==0.9.0")
    conversations = json.loads(path.read_text(encoding="utf-8"))
    documents = []
    for conv_id, conversation in conversations.items():
        speakers: dict[str, str] = {}
        lines = []
        for turn in conversation.get("messages", []):
            texts = [m["text"].strip() for m in turn if m.get("text", "").strip()]
            if not texts:
                continue
            sender = turn[0].get("sender", "")
            speaker = speakers.setdefault(sender, chr(ord("A") + len(speakers) % 26))
            lines.append(f"{speaker}: {' '.join(texts)}")
        if lines:
            documents.append(Document(conv_id, "\n".join(lines)))
    return Corpus("chitchat", documents, prompts=("A: Hi! How are you today?\nB:", "A: What do you do for fun?\nB:"))


# ------------------------------------------------------------------ your files
def text_files(sources: Sequence[str | Path]) -> Corpus:
    """Documents of text files and folders (see the module docstring); errors name the file."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise ValueError(f"folder {str(path)!r} holds no text files ({', '.join(TEXT_SUFFIXES)})")
            files += found
        elif not path.exists():
            named = f"; nor is it a named corpus ({', '.join(NAMES)})" if len(sources) == 1 else ""
            raise FileNotFoundError(f"corpus file {str(path)!r} does not exist{named}")
        else:
            files.append(path)
    documents = []
    for path in files:
        text = read_text(path)
        if path.suffix == ".jsonl":
            found = [Document(f"{path}:{i}", t) for i, t in enumerate(jsonl_strings(text, path), 1) if t.strip()]
        else:
            found = [Document(str(path), text.strip())] if text.strip() else []
        if not found:
            raise ValueError(f"corpus file {str(path)!r} is empty (no text to learn from)")
        documents += found
    first = [" ".join(d.text.split()[:6]) for d in documents[:2]]
    return Corpus("files", documents, prompts=tuple(first))


def read_text(path: Path) -> str:
    """A file's UTF-8 text; a folder, a binary file (a NUL byte) or other bytes than UTF-8 are errors naming it."""
    if not path.is_file():
        raise ValueError(f"corpus file {str(path)!r} is not a file")
    data = path.read_bytes()
    if (nul := data.find(b"\0")) >= 0:
        raise ValueError(f"{path}: not a text file (a NUL byte at offset {nul}; binary?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def jsonl_strings(text: str, path: Path) -> list[str]:
    """The string values of each JSON record (one a line) of a .jsonl file, in order."""
    import json
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number} is not JSON ({e.msg})") from None
        values = record.values() if isinstance(record, dict) else [record]
        out += [value for value in values if isinstance(value, str)]
    return out
