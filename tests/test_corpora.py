"""Corpora for pretraining (issue 16, point 3): Jane Austen from Debian's R package, the chitchat
conversations, plain text files and folders; held-out splits; clear errors."""

from __future__ import annotations

import json

import pytest

from gencycle.data import corpora
from gencycle.data.corpora import Corpus, Document, load_corpus


def _austen_installed() -> bool:
    try:
        corpora.austen_folder()
        return True
    except FileNotFoundError:
        return False


needs_austen = pytest.mark.skipif(not _austen_installed(), reason="Jane Austen's novels need Debian's "
                                  "r-cran-janeaustenr package (apt-get install r-cran-janeaustenr)")


@needs_austen
def test_austen_six_novels_by_chapter():
    novels = corpora.austen_novels()
    assert list(novels) == ["Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma",
                            "Northanger Abbey", "Persuasion"]
    assert sum(len(line.split()) for lines in novels.values() for line in lines) == 717_537  # janeaustenr's text
    corpus = load_corpus("austen")
    assert corpus.words == 717_537  # unwrapping lines into paragraphs keeps every word
    assert len(corpus) == 269  # chapters; each novel's title page joins its first chapter
    assert corpus.documents[0].source == "Sense & Sensibility, CHAPTER 1"
    assert corpus.documents[0].text.startswith("SENSE AND SENSIBILITY\n\nby Jane Austen")
    pride = next(d for d in corpus.documents if d.source == "Pride & Prejudice, Chapter 1")
    assert "It is a truth universally acknowledged, that a single man in possession of a good fortune, " \
           "must be in want of a wife." in pride.text
    assert "  " not in pride.text  # one space between words: the line wrapping is gone
    train, validation = corpus.split(0.05)
    assert len(validation) == len(range(19, 269, 20)) and len(train) + len(validation) == 269


def test_austen_missing_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "R_LIBRARIES", (str(tmp_path),))
    for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError, match="r-cran-janeaustenr.*apt-get install r-cran-janeaustenr"):
        load_corpus("austen")


def test_chitchat_conversations():
    corpus = load_corpus("chitchat")
    assert corpus.name == "chitchat" and len(corpus) == 7168
    assert 2_400_000 < corpus.words < 2_800_000
    first = corpus.documents[0].text.splitlines()
    assert first[0].startswith("A: ") and first[1].startswith("B: ")
    assert all(line[:3] in ("A: ", "B: ", "C: ") for d in corpus.documents[:200] for line in d.text.splitlines())
    train, validation = corpus.split(0.05)
    assert len(validation) == 7168 // 20 and len(train) + len(validation) == 7168


def test_text_files_folders_and_jsonl(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("First book.\nSecond line.\n")
    (tmp_path / "books" / "sub").mkdir()
    (tmp_path / "books" / "sub" / "b.md").write_text("# Notes\n\nMore text here.")
    (tmp_path / "books" / "skip.bin").write_bytes(b"\x00\x01")  # not a text suffix: not read
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"id": "1", "text": "a record"}) + "\n\n" + json.dumps({"text": "another"}) + "\n")
    corpus = load_corpus([tmp_path / "books", records])
    assert [d.text for d in corpus.documents] == ["First book.\nSecond line.", "# Notes\n\nMore text here.",
                                                  "1", "a record", "another"]
    assert corpus.name == "files" and corpus.prompts[0] == "First book. Second line."
    assert len(load_corpus(records, max_documents=2)) == 2


def test_split_holds_out_whole_documents_or_tails():
    many = Corpus("many", [Document(str(i), f"document {i}\n" * 3) for i in range(100)])
    train, validation = many.split(0.1)
    assert len(validation) == 10 and validation[0] == "document 9\n" * 3 and len(train) == 90
    assert many.split(0.1) == (train, validation)  # the same every time
    few = Corpus("few", [Document("a", "\n".join(f"line {i}" for i in range(100)))])
    train, validation = few.split(0.1)
    assert train[0] + validation[0] == few.documents[0].text
    assert validation[0].startswith("\nline 90") or validation[0].startswith("\nline 89")
    with pytest.raises(ValueError, match="validation_fraction"):
        many.split(1.5)


def test_bad_files_get_clear_errors(tmp_path):
    empty, binary, latin, bad_json = (tmp_path / n for n in ("empty.txt", "w.txt", "l.txt", "r.jsonl"))
    empty.write_text(" \n\n")
    binary.write_bytes(b"PK\x03\x04\x00\x00")
    latin.write_bytes("na\xefve".encode("latin-1"))
    bad_json.write_text('{"text": "ok"}\n{oops\n')
    (tmp_path / "nothing").mkdir()
    cases = [(tmp_path / "missing.txt", FileNotFoundError, "does not exist"),
             (empty, ValueError, "is empty"), (binary, ValueError, "not a text file"),
             (latin, ValueError, "not UTF-8"), (bad_json, ValueError, "line 2 is not JSON"),
             (tmp_path / "nothing", ValueError, "holds no text files")]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            load_corpus(path)
    with pytest.raises(FileNotFoundError, match="nor is it a named corpus"):
        load_corpus("austin")
    with pytest.raises(ValueError, match="max_documents"):
        load_corpus("chitchat", max_documents=0)
