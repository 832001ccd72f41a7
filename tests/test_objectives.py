"""Pretraining objectives: packing, masked LM (BERT) and span corruption (T5), tested on their
statistical properties over many draws, and on a tiny model whose loss they lower."""

from math import comb

import numpy as np
import pytest
import torch

from gencycle.model import ModelConfig, Transformer
from gencycle.training.data import IGNORE_INDEX
from gencycle.training.objectives import masked_lm_step, masked_tokens, span_corruption_step
from gencycle.training.pretraining_objectives import (
    MLMCollator, SpanCorruptionCollator, pack_tokens, random_spans_noise_mask, span_corruption_lengths,
    word_continuation,
)
from gencycle.training.tokenizer_training import train_tokenizer_from_texts

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:the corpus gave")]  # tiny corpora, small vocabularies

V, PAD, UNK, CLS, SEP, MASK = 1000, 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
TEXTS = ["the quick brown fox jumps over the lazy dog", "unbelievable things happen to unprepared people",
         "tokenizers split words into pieces", "a masked language model predicts the hidden words"] * 20


def bert_rows(batch=64, length=128, seed=0):
    """[CLS] random ids [SEP], then padding on some rows."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(batch):
        n = length - (i % 4) * 10
        rows.append([CLS, *torch.randint(5, V, (n - 2,), generator=g).tolist(), SEP])
    return rows


# ------------------------------------------------------------------ packing
def test_pack_tokens_cuts_the_stream_into_blocks_with_eos_between_documents():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33, 34], [40, 41]]
    stream = [10, 11, 12, 2, 20, 2, 30, 31, 32, 33, 34, 2, 40, 41, 2]
    blocks = list(pack_tokens(docs, 4, eos_token_id=2, drop_last=False))
    assert [len(b) for b in blocks] == [4, 4, 4, 3]
    assert sum(blocks, []) == stream
    assert list(pack_tokens(docs, 4, eos_token_id=2)) == blocks[:3]
    assert sum(pack_tokens(docs, 5, eos_token_id=None), []) == [t for d in docs for t in d][:10]
    with pytest.raises(ValueError, match="block_size"):
        list(pack_tokens(docs, 0, 2))


# ------------------------------------------------------------------ masked LM
def test_mlm_masks_fifteen_percent_split_80_10_10_and_never_special_tokens():
    collate = MLMCollator(MASK, V, SPECIAL, PAD, seed=0)
    chosen = candidates = as_mask = as_random = kept = 0
    for draw in range(4):
        rows = bert_rows(seed=draw)
        batch = collate(rows)
        original = torch.full_like(batch["input_ids"], PAD)
        for i, row in enumerate(rows):
            original[i, :len(row)] = torch.tensor(row)
        special = torch.isin(original, torch.tensor(SPECIAL))
        picked = batch["labels"] != IGNORE_INDEX
        assert not (picked & special).any()                                 # never a special token or padding
        assert torch.equal(batch["input_ids"][special], original[special])  # and they are left as they are
        assert torch.equal(batch["labels"][picked], original[picked])      # labels: the original tokens
        assert torch.equal(batch["attention_mask"], (torch.arange(128) < torch.tensor(
            [len(r) for r in rows])[:, None]).long())
        inputs = batch["input_ids"][picked]
        candidates += int((~special).sum())
        chosen += int(picked.sum())
        as_mask += int((inputs == MASK).sum())
        kept += int((inputs == original[picked]).sum())
        as_random += int(((inputs != MASK) & (inputs != original[picked])).sum())
        assert not torch.isin(batch["input_ids"][picked & (batch["input_ids"] != MASK)],
                              torch.tensor(SPECIAL)).any()                  # random replacements are real tokens
    assert abs(chosen / candidates - 0.15) < 0.01  # ~30k candidates: 5 standard deviations
    assert abs(as_mask / chosen - 0.8) < 0.03
    assert abs(as_random / chosen - 0.1) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02


def test_mlm_draws_are_reproducible_and_private():
    rows = bert_rows(8)
    state = torch.random.get_rng_state()
    first, again = MLMCollator(MASK, V, SPECIAL, seed=3)(rows), MLMCollator(MASK, V, SPECIAL, seed=3)(rows)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["labels"], MLMCollator(MASK, V, SPECIAL, seed=4)(rows)["labels"])
    collate = MLMCollator(MASK, V, SPECIAL, seed=3)
    assert not torch.equal(collate(rows)["labels"], collate(rows)["labels"])  # each batch draws afresh


def test_whole_word_masking_masks_every_piece_of_a_word():
    continuation = torch.zeros(V, dtype=torch.bool)
    continuation[500:] = True                                # ids 500.. continue the word before them
    collate = MLMCollator(MASK, V, SPECIAL, PAD, whole_word=True, word_continuation=continuation, seed=0)
    chosen = candidates = 0
    for draw in range(4):
        rows = bert_rows(seed=draw)
        batch = collate(rows)
        for row, labels in zip(rows, batch["labels"].tolist()):
            words, word = [], None
            for position, token in enumerate(row):
                if token in SPECIAL:
                    word = None
                elif word is None or not continuation[token]:
                    word = [position]
                    words.append(word)
                else:
                    word.append(position)
            for word in words:
                picked = {labels[p] != IGNORE_INDEX for p in word}
                assert len(picked) == 1, (word, [labels[p] for p in word])  # all of the word or none of it
            chosen += sum(label != IGNORE_INDEX for label in labels)
            candidates += sum(len(w) for w in words)
    assert abs(chosen / candidates - 0.15) < 0.02  # words of about 2 pieces: fewer independent draws


def test_whole_word_masking_from_a_wordpiece_tokenizer():
    tok = train_tokenizer_from_texts(TEXTS, "wordpiece", 120, show_progress=False)
    collate = MLMCollator.from_tokenizer(tok, whole_word=True, mlm_probability=0.5, seed=1)
    ids = tok.encode("unbelievable unprepared tokenizers predicts")
    tokens = tok.convert_ids_to_tokens(ids)
    assert any(t.startswith("##") for t in tokens)
    for _ in range(20):
        labels = collate([ids] * 4)["labels"]
        for row in labels.tolist():
            for position, token in enumerate(tokens):
                if token.startswith("##"):  # a continuation is masked exactly when the piece before it is
                    assert (row[position] == IGNORE_INDEX) == (row[position - 1] == IGNORE_INDEX)
            assert row[0] == row[-1] == IGNORE_INDEX  # [CLS], [SEP]


def test_word_continuation_of_byte_level_and_metaspace_tokenizers():
    for kind, size, mark in (("bpe", 300, "\u0120"), ("unigram", 160, "\u2581")):
        tok = train_tokenizer_from_texts(TEXTS, kind, size, show_progress=False, min_frequency=1)
        flags = word_continuation(tok)
        ids = tok.encode("the quick tokenizers", add_special_tokens=False)
        for i, token in zip(ids, tok.convert_ids_to_tokens(ids)):
            assert bool(flags[i]) == (not token.startswith(mark)), (kind, token)


def test_mlm_errors():
    with pytest.raises(ValueError, match="word_continuation"):
        MLMCollator(MASK, V, SPECIAL, whole_word=True)
    with pytest.raises(ValueError, match="mlm_probability"):
        MLMCollator(MASK, V, SPECIAL, mlm_probability=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        MLMCollator(MASK, V, SPECIAL)([[CLS, 5000, SEP]])
    tok = train_tokenizer_from_texts(TEXTS, "bpe", 300, show_progress=False)
    with pytest.raises(ValueError, match="mask token"):
        MLMCollator.from_tokenizer(tok)


# ------------------------------------------------------------------ span corruption
def test_noise_mask_follows_t5_counts():
    rng = np.random.default_rng(0)
    for length in (20, 100, 512, 568):
        noise = round(length * 0.15)
        spans = round(noise / 3)
        for _ in range(20):
            mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
            assert mask.shape == (length,) and mask.sum() == noise
            starts = mask & ~np.concatenate([[False], mask[:-1]])
            assert starts.sum() == spans and not mask[0] and mask[-1]  # non-noise first, noise last


def test_span_lengths_are_a_uniform_random_segmentation():
    """Noise of n tokens cut into k spans at random: P(span length = j) = C(n-j-1, k-2) / C(n-1, k-1)."""
    rng, n, k = np.random.default_rng(1), 15, 5              # length 100: 15 noise tokens in 5 spans
    lengths = []
    for _ in range(3000):
        mask = np.concatenate([[False], random_spans_noise_mask(100, 0.15, 3.0, rng), [False]]).astype(int)
        edges = np.flatnonzero(np.diff(mask))
        lengths += (edges[1::2] - edges[0::2]).tolist()
    lengths = np.array(lengths)
    assert len(lengths) == 3000 * k and lengths.mean() == 3.0
    for j in range(1, 6):
        expected = comb(n - j - 1, k - 2) / comb(n - 1, k - 1)
        assert abs((lengths == j).mean() - expected) < 0.015, j
    many = [random_spans_noise_mask(512, 0.15, 3.0, rng) for _ in range(200)]  # 77 tokens in 26 spans
    spans = sum(int((m & ~np.concatenate([[False], m[:-1]])).sum()) for m in many)
    assert abs(np.mean(many) - 0.15) < 0.002 and abs(sum(m.sum() for m in many) / spans - 3.0) < 0.05


def test_span_corruption_reconstructs_the_original_with_sentinels_in_order():
    sentinels = list(range(V - 1, V - 101, -1))                # <extra_id_0> = V - 1, counting down
    collate = SpanCorruptionCollator(sentinels, eos_token_id=1, pad_token_id=0, seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        row = torch.randint(2, V - 100, (int(torch.randint(10, 300, (1,), generator=g)),), generator=g).tolist()
        inputs, targets = collate.corrupt(row)
        assert inputs[-1] == targets[-1] == 1
        used = [t for t in inputs if t in sentinels]
        assert used == sentinels[:len(used)] and [t for t in targets if t in sentinels] == used
        assert targets[0] == sentinels[0]
        assert len(inputs) - 1 - len(used) + len(targets) - 1 - len(used) == len(row)
        assert reconstruct(inputs[:-1], targets[:-1], set(sentinels)) == row
        noise = round(len(row) * 0.15)
        assert len(targets) == noise + len(used) + 1


def reconstruct(inputs, targets, sentinels):
    """Each sentinel of the inputs replaced by the target tokens that follow the same sentinel."""
    spans, current = {}, None
    for t in targets:
        if t in sentinels:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    return [t for s in inputs for t in (spans[s] if s in sentinels else [s])]


def test_span_corruption_batch_lengths_and_decoder_inputs():
    raw, targets_length = span_corruption_lengths(64)
    assert span_corruption_lengths(512) == (568, 114)       # T5's figures for 512-token inputs
    blocks = list(pack_tokens([list(range(5, 5 + n)) for n in (40, 90, 17, 60)], raw, eos_token_id=1))
    collate = SpanCorruptionCollator(list(range(V - 1, V - 101, -1)), eos_token_id=1, pad_token_id=0, seed=0)
    batch = collate(blocks)
    assert batch["input_ids"].shape == (len(blocks), 64) and batch["labels"].shape == (len(blocks), targets_length)
    assert batch["attention_mask"].all()
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    assert (batch["decoder_input_ids"][:, 0] == 0).all()
    uneven = collate([blocks[0], blocks[1][:30]])  # shorter rows are padded: ids with pad, labels with -100
    assert uneven["attention_mask"][1].sum() < uneven["attention_mask"][0].sum()
    assert (uneven["labels"][1] == IGNORE_INDEX).any() and not (uneven["decoder_input_ids"] == IGNORE_INDEX).any()


def test_span_corruption_sentinels_from_a_unigram_tokenizer():
    tok = train_tokenizer_from_texts(TEXTS, "unigram", 200, extra_ids=20, show_progress=False)
    collate = SpanCorruptionCollator.from_tokenizer(tok, seed=0)
    assert collate.sentinel_ids.tolist() == list(range(tok.vocab_size - 1, tok.vocab_size - 21, -1))
    ids = tok.encode(" ".join(TEXTS[:4]), add_special_tokens=False)
    inputs, targets = collate.corrupt(ids)
    assert tok.convert_ids_to_tokens(targets[0]) == "<extra_id_0>" and tok.eos_token_id == targets[-1]
    assert reconstruct(inputs[:-1], targets[:-1], set(collate.sentinel_ids.tolist())) == ids
    with pytest.raises(ValueError, match="more than the 20 sentinels"):
        collate.corrupt(list(range(5, 600)))
    with pytest.raises(ValueError, match="no <extra_id_N> sentinels"):
        SpanCorruptionCollator.from_tokenizer(train_tokenizer_from_texts(TEXTS, "bpe", 300, show_progress=False))


def test_span_corruption_is_reproducible():
    row = list(range(5, 200))
    a, b = (SpanCorruptionCollator([999, 998, 997, 996, 995, 994, 993, 992, 991, 990], 1, seed=7)
            for _ in range(2))
    assert [a.corrupt(row) for _ in range(3)] == [b.corrupt(row) for _ in range(3)]


# ------------------------------------------------------------------ tiny models learn
def counting_rows(n, length, vocab, seed):
    """Rows that count up from a random start (mod the ordinary ids): a masked token follows from its neighbours."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, vocab - 5, (n, 1), generator=g)
    return (5 + (starts + torch.arange(length)) % (vocab - 5)).tolist()


def train(model, step, collate, rows, held_out, steps=80, lr=1e-2):
    """Loss on one held-out batch (drawn once: the same masks before and after), `steps` AdamW steps between."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    eval_batch = collate(held_out)
    with torch.no_grad():
        before = float(step(model, eval_batch))
    for i in range(steps):
        loss = step(model, collate(rows[i % 4 * 16:(i % 4 + 1) * 16]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(step(model, eval_batch))
    return before, after


def test_tiny_encoder_learns_with_masked_lm_step():
    vocab = 64
    config = ModelConfig(family="bert", architecture="encoder", vocab_size=vocab, hidden_size=32, num_layers=2,
                         num_heads=4, intermediate_size=64, max_position_embeddings=64, pre_norm=False,
                         embedding_norm=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True, mlm_head=True,
                         pad_token_id=PAD)
    model = Transformer(config)
    collate = MLMCollator(MASK, vocab, SPECIAL, PAD, mlm_probability=0.15, seed=0)
    batch = collate(counting_rows(4, 32, vocab, seed=0))
    assert masked_tokens(batch) == int((batch["labels"] != IGNORE_INDEX).sum()) > 0
    before, after = train(model, masked_lm_step, collate, counting_rows(64, 32, vocab, seed=1),
                          counting_rows(16, 32, vocab, seed=99))
    assert after < 0.75 * before, (before, after)  # from about ln(64) = 4.16
    headless = Transformer(config.replace(mlm_head=False))
    with pytest.raises(ValueError, match="mlm_head=True"):
        masked_lm_step(headless, batch)


def test_tiny_t5_learns_with_span_corruption_step():
    vocab = 64
    config = ModelConfig(family="t5", architecture="encoder-decoder", vocab_size=vocab, hidden_size=32,
                         num_layers=2, num_encoder_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
                         position="relative", norm="rmsnorm", norm_eps=1e-6, norm_bias=False, activation="relu",
                         scale_attention=False, tie_embeddings=True, scale_tied_logits=True, pad_token_id=0,
                         eos_token_id=1, decoder_start_token_id=0)
    model = Transformer(config)
    collate = SpanCorruptionCollator(list(range(vocab - 1, vocab - 11, -1)), eos_token_id=1, seed=0)
    before, after = train(model, span_corruption_step, collate, counting_rows(64, 32, vocab - 10, seed=1),
                          counting_rows(16, 32, vocab - 10, seed=99))  # ids below the 10 sentinels
    assert after < 0.75 * before, (before, after)  # from about ln(64) = 4.16
