"""Train a tokenizer from a text corpus: byte-level BPE (GPT-2), WordPiece (BERT) or Unigram (T5).

    tok = train_tokenizer(["corpus.txt"], kind="bpe", vocab_size=8000, out="my-tokenizer")
    tok.encode("Hello there")                       # gencycle's Tokenizer, ready to use

The folder gets tokenizer.json + tokenizer_config.json + special_tokens_map.json, the layout that
`transformers.AutoTokenizer.from_pretrained(out)` and `gencycle.load_tokenizer(out)` both read,
with the same ids. Each kind carries its family's pipeline and special tokens:

    kind       pre-tokenizer / normalizer          special tokens (ids)                      adds on encode
    bpe        byte-level (GPT-2), no normalizer   <|endoftext|> = 0: bos, eos and unk        nothing
    wordpiece  BERT's normalizer and splitter      [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4      [CLS] A [SEP]
    unigram    NFKC, Metaspace (sentencepiece)     <pad> = 0, </s> = 1, <unk> = 2; then       A </s>
                                                   <extra_id_{n-1}> .. <extra_id_0> at the end

`vocab_size` counts every id, special tokens and T5's sentinels included, so it is the number a
`ModelConfig(vocab_size=...)` needs. Corpus files are UTF-8 text, one or more documents;
a `.jsonl` file gives the string values of each record.
"""

from __future__ import annotations

import codecs
import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from gencycle.tokenizer import Tokenizer

KINDS = ("bpe", "wordpiece", "unigram")
BYTE_ALPHABET = 256  # byte-level BPE starts from every byte
CHUNK = 1 << 20


@dataclass(frozen=True)
class Recipe:
    """What one kind of tokenizer starts from: its special tokens, first in the vocabulary, and their roles."""
    special_tokens: tuple[str, ...]
    roles: dict[str, str]          # bos_token / eos_token / ... -> token
    alphabet: int                  # ids the trainer needs besides the special tokens
    model_max_length: int


RECIPES = {
    "bpe": Recipe(("<|endoftext|>",), dict.fromkeys(("bos_token", "eos_token", "unk_token"), "<|endoftext|>"),
                  BYTE_ALPHABET, 1024),
    "wordpiece": Recipe(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                        {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                         "mask_token": "[MASK]"}, 1, 512),
    "unigram": Recipe(("<pad>", "</s>", "<unk>"), {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
                      1, 512),
}


def sentinel(i: int) -> str:
    """T5's i-th sentinel token: the one that replaces the i-th noise span of a span-corrupted input."""
    return f"<extra_id_{i}>"


# ------------------------------------------------------------------ the corpus
def corpus_texts(path: str | Path) -> Iterator[str]:
    """The lines of a UTF-8 text file, or the string values of each record of a .jsonl file.

    A file that is missing, a folder, binary (a NUL byte) or not UTF-8 is an error naming it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"corpus file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"corpus file {str(path)!r} is not a file (pass the files of a folder one by one)")
    lines = _utf8_lines(path)
    if path.suffix != ".jsonl":
        yield from lines
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number} is not JSON ({e.msg})") from None
        values = record.values() if isinstance(record, dict) else [record]
        yield from (value for value in values if isinstance(value, str))


def _utf8_lines(path: Path) -> Iterator[str]:
    decoder, offset, rest = codecs.getincrementaldecoder("utf-8")(), 0, ""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            if (nul := chunk.find(b"\0")) >= 0:
                raise ValueError(f"{path}: not a text file (a NUL byte at offset {offset + nul}; binary?)")
            try:
                text = rest + decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text (byte {chunk[e.start]:#04x} at offset "
                                 f"{offset + e.start})") from None
            offset += len(chunk)
            *lines, rest = text.split("\n")
            yield from lines
        try:
            rest += decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text (it ends inside a multi-byte character)") from None
    if rest:
        yield rest


def check_corpus(files: Iterable[str | Path]) -> int:
    """Read every file once: errors name the file (see `corpus_texts`); an empty one is an error too.
    Returns the number of texts, the length of the trainer's progress bar."""
    files, total = list(files), 0
    if not files:
        raise ValueError("no corpus files given")
    for path in files:
        count = nonblank = 0
        for text in corpus_texts(path):
            count, nonblank = count + 1, nonblank or bool(text.strip())
        if not nonblank:
            raise ValueError(f"corpus file {str(path)!r} is empty (no text to learn from)")
        total += count
    return total


# ------------------------------------------------------------------ training
def train_tokenizer(files: Iterable[str | Path], kind: str = "bpe", vocab_size: int = 32000,
                    out: str | Path | None = None, **options) -> Tokenizer:
    """Train a tokenizer on corpus files (UTF-8 text or .jsonl); save it to `out` when given.

    Options as in `train_tokenizer_from_texts`. Bad files are found before training starts.
    """
    files = list(files)
    length = check_corpus(files)
    texts = (text for path in files for text in corpus_texts(path))
    return train_tokenizer_from_texts(texts, kind, vocab_size, out, length=length, **options)


def train_tokenizer_from_texts(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 32000,
                               out: str | Path | None = None, *, lowercase: bool = True, extra_ids: int = 100,
                               min_frequency: int = 2, model_max_length: int | None = None,
                               show_progress: bool = True, length: int | None = None) -> Tokenizer:
    """Train a tokenizer of `kind` ("bpe" | "wordpiece" | "unigram") with `vocab_size` ids in all.

    lowercase: WordPiece only (BERT uncased, accents stripped too). extra_ids: Unigram only, T5's
    sentinels, appended last so `<extra_id_0>` has the highest id. min_frequency: BPE / WordPiece
    merges seen fewer times are not learnt. model_max_length: the context the tokenizer config
    states (default 1024 for bpe, 512 otherwise). show_progress: tokenizers' own progress bar;
    `length` (the number of texts) sizes it.
    """
    if kind not in RECIPES:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(KINDS)}")
    recipe = RECIPES[kind]
    if kind == "unigram" and extra_ids < 0:
        raise ValueError(f"extra_ids must be 0 or more, got {extra_ids}")
    reserved = len(recipe.special_tokens) + (extra_ids if kind == "unigram" else 0)
    if vocab_size < reserved + recipe.alphabet:
        alphabet = f"the {BYTE_ALPHABET}-byte alphabet" if kind == "bpe" else "at least one piece"
        raise ValueError(f"vocab_size {vocab_size} is too small for a {kind} tokenizer: it needs at least "
                         f"{reserved + recipe.alphabet} ids ({_parts(kind, extra_ids, alphabet)})")
    trainer_size = vocab_size - (extra_ids if kind == "unigram" else 0)  # the sentinels are added after
    backend, trainer = _pipeline(kind, trainer_size, lowercase, min_frequency, show_progress)
    characters: set[str] = set()  # of the corpus, for the Unigram trainer's "too small" error

    def noted(texts):
        for text in texts:
            characters.update(text)
            yield text

    try:
        backend.train_from_iterator(noted(texts) if kind == "unigram" else texts, trainer, length=length)
    except Exception as e:  # the Unigram trainer's words: "The vocabulary is not large enough to contain all chars"
        if "not large enough" not in str(e):
            raise
        needed = reserved + _unigram_alphabet(backend, characters)
        raise ValueError(f"vocab_size {vocab_size} is too small for this corpus's unigram tokenizer: it needs "
                         f"at least {needed} ids ({_parts(kind, extra_ids, needed - reserved)})") from None
    if backend.get_vocab_size() > trainer_size:  # WordPiece and Unigram keep every character of the corpus
        needed = backend.get_vocab_size() + reserved - len(recipe.special_tokens)
        raise ValueError(f"vocab_size {vocab_size} is too small for this corpus's {kind} tokenizer: it needs "
                         f"{needed} ids ({_parts(kind, extra_ids, needed - reserved)})")
    _finish(backend, kind, extra_ids)
    if (trained := backend.get_vocab_size()) < vocab_size:
        warnings.warn(f"the corpus gave a {kind} vocabulary of {trained} ids, fewer than vocab_size {vocab_size} "
                      "(too little text for more merges or pieces)")
    tokenizer = Tokenizer(backend, dict(recipe.roles), model_max_length=model_max_length or recipe.model_max_length,
                          clean_up_tokenization_spaces=kind == "wordpiece")  # BERT's "do n't" -> "don't"
    if out is not None:
        save_trained(tokenizer, out, kind, lowercase=lowercase, extra_ids=extra_ids)
    return tokenizer


def _pipeline(kind: str, trainer_size: int, lowercase: bool, min_frequency: int, show_progress: bool):
    """An untrained backend with the kind's normalizer, pre-tokenizer and decoder, and its trainer."""
    specials = [AddedToken(t, special=True, normalized=False) for t in RECIPES[kind].special_tokens]
    if kind == "bpe":
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=trainer_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
    elif kind == "wordpiece":
        backend = Backend(models.WordPiece(unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=trainer_size, min_frequency=min_frequency,
                                            special_tokens=specials, continuing_subword_prefix="##",
                                            show_progress=show_progress)
    else:
        backend = Backend(models.Unigram())
        backend.normalizer = normalizers.NFKC()
        backend.pre_tokenizer = pre_tokenizers.Sequence([   # as gencycle reads T5's spiece.model
            pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
        backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=trainer_size, special_tokens=specials, unk_token="<unk>",
                                          show_progress=show_progress)
    return backend, trainer


def _finish(backend: Backend, kind: str, extra_ids: int) -> None:
    """After training: T5's sentinels (`<extra_id_0>` the last id) and the special tokens each encoding gets."""
    if kind == "unigram":
        backend.add_special_tokens([AddedToken(sentinel(i), special=True, normalized=False)
                                    for i in reversed(range(extra_ids))])
        eos = ("</s>", backend.token_to_id("</s>"))
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                               special_tokens=[eos])
    elif kind == "wordpiece":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")])


def _parts(kind: str, extra_ids: int, rest: int | str) -> str:
    """What the ids of a too-small vocabulary go to: "5 special tokens + 50 characters ..." """
    count = len(RECIPES[kind].special_tokens)
    parts = [f"{count} special token{'s' * (count != 1)}"]
    parts += [f"{extra_ids} sentinels"] if kind == "unigram" and extra_ids else []
    parts += [rest if isinstance(rest, str) else
              f"{rest} characters" + (" and ## continuations" if kind == "wordpiece" else "")]
    return " + ".join(parts)


def _unigram_alphabet(backend: Backend, characters: set[str]) -> int:
    """The characters the Unigram trainer must keep: the corpus's, normalized, without spaces, plus the
    Metaspace word mark."""
    normalized = backend.normalizer.normalize_str(" ".join(sorted(characters)))
    return len({c for c in normalized if not c.isspace()} | {"\u2581"})


def save_trained(tokenizer: Tokenizer, out: str | Path, kind: str, *, lowercase: bool = True,
                 extra_ids: int = 0) -> Path:
    """The Hugging Face layout (see `Tokenizer.save_pretrained`) plus what the kind adds to the config:
    WordPiece's `do_lower_case`, Unigram's `extra_ids` and its sentinels as additional special tokens."""
    out = tokenizer.save_pretrained(out)
    added = {}
    if kind == "wordpiece":
        added["do_lower_case"] = lowercase
    if kind == "unigram" and extra_ids:
        added["extra_ids"] = extra_ids
        added["additional_special_tokens"] = [sentinel(i) for i in range(extra_ids)]
    if added:
        file = out / "tokenizer_config.json"
        config = {**json.loads(file.read_text(encoding="utf-8")), **added}
        file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return out
