"""Tokenizer parity with Hugging Face `transformers` (test-only reference), on tokenizers built here and on
the packaged SmolLM2 GGUF and all-MiniLM folders. No download."""

import json

import pytest
import torch

from gencycle.assets import resolve
from gencycle.tokenizer import Tokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\n\nand newlines  ",
    "Ünïcödé café 😀 中文 naïve",
    "Special: <|im_start|>user hi<|im_end|><|endoftext|> [CLS] [MASK] </s> <extra_id_0> <pad>",
    "Numbers 12345 and symbols #@$% don't it's",
    "",
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def assert_same_ids(mine, ref, texts=TEXTS):
    """Same ids, tokens and decoded text (with and without special tokens) as the reference."""
    for text in texts:
        ids = ref(text)["input_ids"]
        assert mine.encode(text) == ids, text
        assert mine.encode(text, add_special_tokens=False) == ref(text, add_special_tokens=False)["input_ids"], text
        assert mine.tokenize(text) == ref.tokenize(text), text
        assert mine.decode(ids) == ref.decode(ids), text
        assert mine.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text
    assert mine.vocab_size == len(ref)
    ids = ref(texts[0])["input_ids"]
    assert mine.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)


def assert_same_batch(mine, ref, side, **kwargs):
    """Same padded batch (ids and attention mask) as the reference, padding on `side`."""
    ref.padding_side = side
    expected = ref(TEXTS, padding=True, return_tensors="pt", **kwargs)
    got = mine(TEXTS, padding_side=side, **kwargs)
    assert got["input_ids"].dtype == torch.long and got["attention_mask"].dtype == torch.long
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["attention_mask"], expected["attention_mask"])


# ---- (a) GPT-2 style byte-level BPE, trained here ------------------------------------------------
@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TEXTS[:3] * 10 + ["the capital of France is Paris"] * 10, trainer)
    bos = ("<|im_start|>", backend.token_to_id("<|im_start|>"))
    backend.post_processor = processors.TemplateProcessing(single=f"{bos[0]} $A", special_tokens=[bos])
    folder = tmp_path_factory.mktemp("bpe")
    backend.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "chat_template": CHATML,
              "model_max_length": 64, "padding_side": "left"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_bpe_matches_transformers(bpe_folder):
    mine, ref = load_tokenizer(bpe_folder), transformers.AutoTokenizer.from_pretrained(bpe_folder)
    assert_same_ids(mine, ref)
    assert mine.encode("hi")[0] == mine.bos_token_id == ref.bos_token_id  # the post-processor in tokenizer.json
    assert (mine.eos_token_id, mine.pad_token_id) == (ref.eos_token_id, ref.pad_token_id)
    assert mine.model_max_length == 64 and mine.padding_side == "left"
    for side in ("left", "right"):
        assert_same_batch(mine, ref, side)
        assert_same_batch(mine, ref, side, truncation=True, max_length=5)
    assert mine.apply_chat_template(CHAT) == ref.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def test_bpe_decode_round_trip(bpe_folder):
    tok = load_tokenizer(bpe_folder)
    for text in TEXTS:  # byte-level BPE is lossless, whatever the text
        assert tok.decode(tok.encode(text)[1:]) == text


def test_padding_left_and_right(bpe_folder):
    tok = load_tokenizer(bpe_folder)
    short, long = tok.encode("hi"), tok.encode("hello there, the capital")
    pad = tok.pad_token_id
    left = tok(["hi", "hello there, the capital"])  # padding_side from the config: left
    assert left["input_ids"][0].tolist() == [pad] * (len(long) - len(short)) + short
    assert left["attention_mask"][0].tolist() == [0] * (len(long) - len(short)) + [1] * len(short)
    right = tok(["hi", "hello there, the capital"], padding_side="right")
    assert right["input_ids"][0].tolist() == short + [pad] * (len(long) - len(short))
    assert right["attention_mask"].sum(1).tolist() == [len(short), len(long)]
    fixed = tok(["hi"], padding="max_length", max_length=8, return_tensors=None)
    assert fixed["input_ids"] == [[pad] * (8 - len(short)) + short]
    assert tok(["hi", "hello there"], padding=False, return_tensors=None)["input_ids"][0] == short
    empty = tok([""], add_special_tokens=False)["input_ids"]
    assert empty.shape == (1, 0) and empty.dtype == torch.long
    cut = tok(["hello there, the capital"], truncation=True, max_length=3)["input_ids"]
    assert cut.tolist() == [long[:3]]


def test_pad_falls_back_to_eos(bpe_folder, tmp_path):
    config = json.loads((bpe_folder / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (tmp_path / "tokenizer.json").write_text((bpe_folder / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token_id == tok.eos_token_id is not None
    assert tok(["a", "a b c"])["input_ids"][0, 0].item() == tok.eos_token_id


# ---- (b) WordPiece: the packaged all-MiniLM-L6-v2 folder --------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    folder = resolve("all-minilm-l6-v2")
    return load_tokenizer("all-minilm-l6-v2"), transformers.AutoTokenizer.from_pretrained(folder)


def test_wordpiece_matches_transformers(minilm):
    mine, ref = minilm
    assert_same_ids(mine, ref)
    assert (mine.pad_token_id, mine.unk_token_id, mine.model_max_length) == (ref.pad_token_id, ref.unk_token_id, 512)
    assert mine.all_special_ids == sorted(ref.all_special_ids)
    for side in ("left", "right"):
        assert_same_batch(mine, ref, side)
        assert_same_batch(mine, ref, side, truncation=True, max_length=6)
    long = "word " * 600  # tokenizer.json asks for truncation at 128: we truncate only when asked, like transformers
    assert len(mine.encode(long)) == len(ref(long)["input_ids"]) == 602
    assert mine([long], truncation=True)["input_ids"].shape == (1, 512)


def test_clean_up_tokenization_spaces_as_configured(tmp_path):
    folder = resolve("all-minilm-l6-v2")
    (tmp_path / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": True}))
    mine, ref = load_tokenizer(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = ref("Don't stop, it's fine .")["input_ids"]
    assert mine.decode(ids) == ref.decode(ids) and "don't" in mine.decode(ids)


def test_missing_chat_template_is_an_error(minilm):
    with pytest.raises(ValueError, match="no chat template"):
        minilm[0].apply_chat_template(CHAT)


# ---- (c) SmolLM2 GGUF vocabulary (byte-level BPE in llama.cpp metadata) -----------------------------
@pytest.fixture(scope="module")
def smollm():
    path = resolve("smollm2-135m-instruct")
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)  # a few seconds
    return load_tokenizer("smollm2-135m-instruct"), ref


def test_gguf_matches_transformers(smollm):
    mine, ref = smollm
    assert_same_ids(mine, ref)
    assert mine.vocab_size == 49152
    assert [mine.bos_token_id, mine.eos_token_id, mine.pad_token_id, mine.unk_token_id] == \
        [ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, ref.unk_token_id] == [1, 2, 2, 0]
    assert mine.model_max_length == 8192  # the GGUF's context length
    for side in ("left", "right"):
        assert_same_batch(mine, ref, side)


def test_gguf_chat_template_matches_transformers(smollm):
    mine, ref = smollm
    for messages in (CHAT, CHAT[1:2]):
        for prompt in (True, False):
            text = mine.apply_chat_template(messages, add_generation_prompt=prompt)
            assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            ids = mine.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True)
            assert ids == ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)["input_ids"]
    assert mine.apply_chat_template(CHAT[1:2]).endswith("<|im_start|>assistant\n")


def test_gguf_decode_round_trip(smollm):
    tok = smollm[0]
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(torch.tensor(tok.encode("Paris")), skip_special_tokens=True) == "Paris"


def test_save_pretrained_loads_in_transformers(smollm, tmp_path):
    mine = smollm[0]
    mine.save_pretrained(tmp_path)
    ref, back = transformers.AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path)
    assert_same_ids(mine, ref)
    assert_same_ids(back, ref)
    assert ref.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == mine.apply_chat_template(CHAT)
    assert (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, ref.model_max_length) == (1, 2, 2, 8192)
    assert back.chat_template == mine.chat_template and back.special_tokens == mine.special_tokens


def write_gguf(path, tokens, types, merges, model="gpt2", pre="default", add_bos=True, add_eos=False):
    """A tokenizer-only llama GGUF (one dummy tensor), as llama.cpp's converter lays out its metadata."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_gguf(bpe_folder, path, **options):
    """The trained BPE as a GGUF, plus a user-defined token `<think>`."""
    vocab = json.loads((bpe_folder / "tokenizer.json").read_text())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get) + ["<think>"]
    types = [3 if t.startswith("<|") else 1 for t in tokens[:-1]] + [4]  # 3 control, 4 user-defined
    return write_gguf(path, tokens, types, [" ".join(m) for m in vocab["merges"]], **options)


@pytest.mark.parametrize("pre", ["default", "llama-bpe", "qwen2"])
def test_small_gguf_with_bos_eos_and_user_defined_tokens(bpe_folder, tmp_path, pre):
    path = tiny_gguf(bpe_folder, tmp_path / "tiny.gguf", pre=pre, add_bos=True, add_eos=True)
    mine, ref = load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert_same_ids(mine, ref, TEXTS + ["a <think> b", "digits 1234567 and 'll don't"])
    assert mine.encode("x")[0] == 1 and mine.encode("x")[-1] == 2
    assert load_tokenizer(tmp_path).encode("a <think> b") == mine.encode("a <think> b")  # folder with one .gguf


def test_a_gguf_tokenizer_is_built_once_then_loaded_from_the_cache(bpe_folder, tmp_path, monkeypatch):
    """Reading a GGUF's vocabulary is slow (2-3 s for SmolLM2's); the built tokenizer is cached, and a
    changed file is read again."""
    import os
    from gencycle import tokenizer as module
    monkeypatch.setenv("GENCYCLE_CACHE", str(tmp_path / "cache"))
    path = tiny_gguf(bpe_folder, tmp_path / "tiny.gguf", pre="llama-bpe", add_bos=True, add_eos=True)
    texts = TEXTS + ["a <think> b <|endoftext|>"]
    first = load_tokenizer(path)
    build = module._build_from_gguf
    monkeypatch.setattr(module, "_build_from_gguf", lambda file: pytest.fail("built again"))
    cached = load_tokenizer(path)
    assert [cached.encode(t) for t in texts] == [first.encode(t) for t in texts]
    assert (cached.bos_token_id, cached.eos_token_id, cached.chat_template) == \
        (first.bos_token_id, first.eos_token_id, first.chat_template)
    assert cached.decode(cached.encode(texts[-1]), skip_special_tokens=True) == \
        first.decode(first.encode(texts[-1]), skip_special_tokens=True)
    calls = []
    monkeypatch.setattr(module, "_build_from_gguf", lambda file: calls.append(file) or build(file))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file changed
    assert load_tokenizer(path).encode(texts[0]) == first.encode(texts[0])
    assert len(calls) == 1


# ---- (d) T5: a sentencepiece unigram model trained here ---------------------------------------------
@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("t5")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS[:5] * 20), model_prefix=str(folder / "spiece"), vocab_size=80,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
    (folder / "spiece.vocab").unlink()
    return folder


def test_t5_sentencepiece_matches_transformers(t5_folder):
    mine, ref = load_tokenizer(t5_folder), transformers.T5Tokenizer.from_pretrained(t5_folder)
    assert_same_ids(mine, ref)
    assert mine.encode("hello")[-1] == mine.eos_token_id == ref.eos_token_id == 1
    assert (mine.pad_token_id, mine.unk_token_id, mine.bos_token_id) == (0, 2, None)
    assert mine.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == \
        ref.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [179, 80]
    for side in ("left", "right"):
        assert_same_batch(mine, ref, side, truncation=True, max_length=7)
    assert mine.decode(mine.encode("hello world"), skip_special_tokens=True) == "hello world"


def test_t5_save_pretrained_loads_in_transformers(t5_folder, tmp_path):
    load_tokenizer(t5_folder).save_pretrained(tmp_path)
    assert_same_ids(load_tokenizer(tmp_path), transformers.T5Tokenizer.from_pretrained(t5_folder))
    assert_same_ids(load_tokenizer(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path))


# ---- errors -----------------------------------------------------------------------------------------
def test_missing_tokenizer_file_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_tokenizer(tmp_path)
    assert all(name in str(error.value) for name in ("tokenizer.json", "spiece.model", str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        load_tokenizer(tmp_path / "no-such-folder")


def test_unsupported_gguf_tokenizer_says_what_is_supported(tmp_path):
    path = write_gguf(tmp_path / "spm.gguf", ["<unk>", "<s>", "</s>", "a"], [2, 3, 3, 1], [], model="llama")
    with pytest.raises(ValueError, match=r"'llama' is not supported; supported: gpt2"):
        load_tokenizer(path)


def test_unsupported_gguf_pre_tokenizer_is_an_error(bpe_folder, tmp_path):
    with pytest.raises(ValueError, match="pre-tokenizer 'tekken' is not supported"):
        load_tokenizer(tiny_gguf(bpe_folder, tmp_path / "tekken.gguf", pre="tekken"))


def test_sentencepiece_bpe_model_is_an_error(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS[:3] * 10), vocab_size=60, model_type="bpe",
                                             model_prefix=str(tmp_path / "spiece"), minloglevel=2)
    with pytest.raises(ValueError, match="unigram"):
        load_tokenizer(tmp_path)


def test_bad_arguments_are_errors(bpe_folder):
    tok = load_tokenizer(bpe_folder)
    with pytest.raises(ValueError, match="padding_side"):
        tok(["a"], padding_side="middle")
    with pytest.raises(ValueError, match="return_tensors"):
        tok(["a"], return_tensors="np")
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a", "a b c"], padding=False)
    plain = Tokenizer(tok.backend)  # no special tokens, no model_max_length
    with pytest.raises(ValueError, match="pad token"):
        plain(["a", "a b c"])
    with pytest.raises(ValueError, match="max_length"):
        plain(["a"], truncation=True)
