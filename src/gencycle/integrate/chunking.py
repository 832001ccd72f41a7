"""Split documents into chunks of at most `chunk_tokens` tokens that overlap by `chunk_overlap`.

Tokens are the embedder's own (its tokenizer's offsets map them back to characters), so a chunk
always fits the encoder. A chunk that does not reach the end of its document ends at a line
break when one falls in its second half, so passages rarely stop mid-sentence:

    chunks = chunk_document(doc, tokenizer, chunk_tokens=200, chunk_overlap=40)
    chunks[0].text, chunks[0].start_line, chunks[0].end_line

Each chunk keeps its character span and its line range in the file (a JSONL record's chunks all
carry the record's line), and a SHA-256 of its text.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from .documents import Document


@dataclass(frozen=True)
class Chunk:
    """A passage of a document. Lines are 1-based and inclusive, in the file."""
    source: str
    record: str | None
    text: str
    start_char: int
    end_char: int
    start_line: int
    end_line: int
    tokens: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def check_sizes(chunk_tokens: int, chunk_overlap: int, limit: int | None = None) -> None:
    """Refuse sizes that cannot work; `limit`: the most tokens the embedder reads per text."""
    from ..errors import OptionError
    if chunk_tokens < 1:
        raise OptionError("chunk_tokens", "must be >= 1", chunk_tokens)
    if not 0 <= chunk_overlap < chunk_tokens:
        raise OptionError("chunk_overlap", f"must be >= 0 and less than chunk_tokens ({chunk_tokens})", chunk_overlap)
    if limit is not None and chunk_tokens > limit:
        raise OptionError("chunk_tokens", "", message=f"chunk_tokens {chunk_tokens} is more than the embedder reads "
                          f"per text ({limit} tokens besides its special tokens): the rest of each chunk would be "
                          "cut off")


def chunk_document(document: Document, tokenizer, chunk_tokens: int = 200, chunk_overlap: int = 40) -> list[Chunk]:
    """The chunks of one document, in order. `tokenizer`: a gencycle Tokenizer (its offsets are used)."""
    check_sizes(chunk_tokens, chunk_overlap)
    text = document.text
    offsets = [span for span in tokenizer.backend.encode(text, add_special_tokens=False).offsets
               if span[1] > span[0]]
    if not offsets:
        return []
    newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_of(char: int) -> int:  # the file line holding character `char` of the text
        if document.record is not None:
            return document.first_line
        return document.first_line + bisect.bisect_left(newlines, char)

    chunks, start, n = [], 0, len(offsets)
    while True:
        end = min(start + chunk_tokens, n)
        if end < n:  # prefer a line break in the second half of the window
            for cut in range(end, start + chunk_tokens // 2, -1):
                if "\n" in text[offsets[cut - 1][1]:offsets[cut][0] + 1]:
                    end = cut
                    break
        first, last = offsets[start][0], offsets[end - 1][1]
        chunks.append(Chunk(document.source, document.record, text[first:last], first, last,
                            line_of(first), line_of(last - 1), end - start))
        if end == n:
            return chunks
        start = max(end - chunk_overlap, start + 1)
