"""Tokenizer training: BPE / WordPiece / Unigram trained on the shipped dialogues, loaded by
transformers and by gencycle with the same ids on text the trainer never saw."""

import json
from pathlib import Path

import pytest

from gencycle.cli import main
from gencycle.tokenizer import load_tokenizer
from gencycle.training.tokenizer_training import train_tokenizer, train_tokenizer_from_texts

transformers = pytest.importorskip("transformers")

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "gencycle" / "data" / "chitchat-dialogsum"
VOCAB = {"bpe": 600, "wordpiece": 600, "unigram": 700}
UNSEEN = [  # not in the training split: the test split's dialogues, and text with rare characters
    *[json.loads(line)["dialogue"] for line in (SHIPPED / "test.jsonl").read_text().splitlines()[:20]],
    "Zürich's café served 3.14159 crêpes\tto 12,000 guests!!  Ω≈ç√ 😀 — naïve coöperation.",
    "  leading and trailing spaces  ", "ALL CAPS SHOUTING, then lowercase.", "",
]


@pytest.fixture(scope="module", params=list(VOCAB))
def trained(request, tmp_path_factory):
    kind = request.param
    out = tmp_path_factory.mktemp(kind)
    tok = train_tokenizer([SHIPPED / "train.jsonl"], kind, VOCAB[kind], out, show_progress=False)
    return kind, out, tok


def test_transformers_and_gencycle_give_the_trainers_ids(trained):
    kind, out, tok = trained
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    ours = load_tokenizer(out)
    assert len(hf) == ours.vocab_size == tok.vocab_size == VOCAB[kind]
    for text in UNSEEN:
        ids = hf(text)["input_ids"]
        assert ours.encode(text) == tok.encode(text) == ids, text
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids) == hf.decode(ids)
    assert ours.all_special_ids == sorted(hf.all_special_ids)
    assert ours.model_max_length == hf.model_max_length == (1024 if kind == "bpe" else 512)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_padded_batches_agree(trained):
    kind, out, _ = trained
    if kind == "bpe":
        pytest.skip("GPT-2 style: no pad token (gencycle pads with EOS, transformers refuses)")
    hf, ours = transformers.AutoTokenizer.from_pretrained(out), load_tokenizer(out)
    texts = UNSEEN[20:23]
    expected = hf(texts, padding=True, return_tensors="pt")
    got = ours(texts)
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    assert got["attention_mask"].tolist() == expected["attention_mask"].tolist()


def test_special_tokens_follow_each_family(trained):
    kind, out, tok = trained
    hf = transformers.AutoTokenizer.from_pretrained(out)
    text = "hello there, how are you"
    if kind == "bpe":  # GPT-2: one <|endoftext|> for bos, eos and unk; every byte is a token
        assert hf.eos_token == hf.bos_token == hf.unk_token == "<|endoftext|>" and hf.pad_token is None
        assert tok.eos_token_id == tok.bos_token_id == 0
        assert tok.encode(text) == tok.encode(text, add_special_tokens=False)  # nothing added
        assert tok.decode(tok.encode("Ω≈ç√ 😀\x01")) == "Ω≈ç√ 😀\x01"  # bytes never seen in training
        assert tok.unk_token_id not in tok.encode(UNSEEN[20])
    elif kind == "wordpiece":  # BERT: [PAD] [UNK] [CLS] [SEP] [MASK], [CLS] A [SEP], lowercased
        assert hf.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        assert (hf.pad_token, hf.unk_token, hf.cls_token, hf.sep_token, hf.mask_token) == \
            ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
        ids = tok.encode(text)
        assert ids[0] == 2 and ids[-1] == 3 and ids == hf(text)["input_ids"]
        assert tok.encode(text.upper()) == ids
        pair = hf(text, "fine thanks")["input_ids"]
        assert pair == tok.backend.encode(text, "fine thanks").ids and pair.count(3) == 2
        assert any(t.startswith("##") for t in tok.tokenize("unbelievably"))
    else:  # T5: <pad> 0, </s> 1, <unk> 2, 100 sentinels at the end, </s> after every text
        assert hf.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
        assert (hf.pad_token, hf.eos_token, hf.unk_token) == ("<pad>", "</s>", "<unk>")
        V = VOCAB[kind]
        assert [hf.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)] == list(range(V - 1, V - 101, -1))
        assert [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in (0, 99)] == [V - 1, V - 100]
        assert tok.backend.get_vocab_size(with_added_tokens=False) == V - 100
        ids = tok.encode(text)
        assert ids[-1] == 1 and ids == hf(text)["input_ids"]
        with_sentinel = hf("hello <extra_id_0> you")["input_ids"]
        assert V - 1 in with_sentinel and with_sentinel == tok.encode("hello <extra_id_0> you")
        assert hf.decode(with_sentinel, skip_special_tokens=True) == tok.decode(with_sentinel, True)


def test_options(tmp_path):
    texts = ["The Quick Brown Fox jumps over the lazy dog."] * 30 + ["Zebras zig-zag."] * 10
    cased = train_tokenizer_from_texts(texts, "wordpiece", 60, lowercase=False, show_progress=False)
    assert cased.encode("Fox") != cased.encode("fox")
    with pytest.warns(UserWarning, match=r"unigram vocabulary of (\d+) ids, fewer than vocab_size 100"):
        tok = train_tokenizer_from_texts(texts, "unigram", 100, tmp_path, extra_ids=10, model_max_length=64,
                                         show_progress=False)
    V = tok.vocab_size
    assert tok.convert_tokens_to_ids("<extra_id_0>") == V - 1 and tok.convert_tokens_to_ids("<extra_id_10>") is None
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 64 and config["extra_ids"] == 10
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.model_max_length == 64 and len(hf) == V
    assert hf.convert_tokens_to_ids("<extra_id_9>") == V - 10


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"), (b"  \n\n\t\n", "empty"), (b"text\x00\x01\x02binary", "not a text file"),
    ("caf\u00e9 cr\u00e8me".encode("latin-1"), "not UTF-8"), (b"ok \xe2\x82", "not UTF-8"),
])
def test_bad_corpus_files_are_named(tmp_path, content, problem):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("some perfectly good text\n" * 20)
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as error:
        train_tokenizer([good, bad], "bpe", 300, show_progress=False)
    assert "bad.txt" in str(error.value)


def test_missing_corpus_and_bad_jsonl(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        train_tokenizer([tmp_path / "nowhere.txt"], "bpe", 300)
    with pytest.raises(ValueError, match="not a file"):
        train_tokenizer([tmp_path], "bpe", 300)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not JSON"):
        train_tokenizer([tmp_path / "bad.jsonl"], "bpe", 300)
    with pytest.raises(ValueError, match="no corpus files"):
        train_tokenizer([], "bpe", 300)


def test_too_small_vocabularies_name_both_numbers():
    texts = ["the quick brown fox jumps over the lazy dog"] * 50
    with pytest.raises(ValueError, match=r"vocab_size 200 .* at least 257 ids \(1 special token \+ the 256-byte"):
        train_tokenizer_from_texts(texts, "bpe", 200)
    with pytest.raises(ValueError, match=r"vocab_size 20 .* wordpiece .* needs (\d+) ids \(5 special tokens"):
        train_tokenizer_from_texts(texts, "wordpiece", 20, show_progress=False)
    with pytest.raises(ValueError, match=r"vocab_size 50 .* at least 104 ids \(3 special tokens \+ 100 sentinels"):
        train_tokenizer_from_texts(texts, "unigram", 50)
    with pytest.raises(ValueError, match=r"vocab_size 110 .* unigram .* needs .*\d+ ids .*characters"):
        train_tokenizer_from_texts(texts, "unigram", 110, show_progress=False)
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        train_tokenizer_from_texts(texts, "sentencepiece", 1000)


def test_too_small_wordpiece_error_states_a_size_that_works():
    texts = ["the quick brown fox jumps over the lazy dog"] * 50
    with pytest.raises(ValueError, match=r"needs (\d+) ids") as error:
        train_tokenizer_from_texts(texts, "wordpiece", 20, show_progress=False)
    needed = int(error.value.args[0].split("needs ")[1].split()[0])
    assert train_tokenizer_from_texts(texts, "wordpiece", needed, show_progress=False).vocab_size == needed


def test_cli_trains_and_reports_errors(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(UNSEEN[:10]))
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus), "--kind", "wordpiece", "--vocab-size", "400",
                 "--out", str(out), "--no-progress"]) == 0
    assert "wordpiece tokenizer of 400 ids" in capsys.readouterr().out
    assert transformers.AutoTokenizer.from_pretrained(out)("hello")["input_ids"] == load_tokenizer(out).encode("hello")
    assert main(["tokenizer", "train", str(tmp_path / "missing.txt"), "--vocab-size", "400", "--out", str(out)]) == 2
    assert "missing.txt" in capsys.readouterr().err
