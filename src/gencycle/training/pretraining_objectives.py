"""Pretraining data: raw token streams -> fixed-length blocks -> the batches of each objective.

    documents (token ids) --pack_tokens--> blocks of block_size ids, documents ended by EOS
        decoder          Collator / causal LM (next token)                    objectives.lm_step
        encoder (BERT)   MLMCollator: 15% of tokens to predict, 80 / 10 / 10  objectives.masked_lm_step
                         [MASK] / random / kept; whole words optional
        enc-dec (T5)     SpanCorruptionCollator: noise spans -> sentinels;    objectives.span_corruption_step
                         targets = sentinel + span, for each span, then EOS

    blocks = list(pack_tokens((tok.encode(t, add_special_tokens=False) for t in texts), 128, tok.eos_token_id))
    collate = MLMCollator.from_tokenizer(tok, whole_word=True, seed=0)
    batch = collate(blocks[:8])                 # input_ids, attention_mask, labels: (B, T)

Each collator draws from its own seeded generator, so a run's masks are the same on every
rerun and do not disturb the global random state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from .data import IGNORE_INDEX, shift_right


# ------------------------------------------------------------------ packing
def pack_tokens(documents: Iterable[Sequence[int]], block_size: int, eos_token_id: int | None,
                drop_last: bool = True) -> Iterator[list[int]]:
    """Concatenate documents, each followed by `eos_token_id` (None: nothing between them), and cut the
    stream into blocks of exactly `block_size` ids. A document may run across blocks. The last,
    shorter block is dropped unless drop_last=False. BERT has no EOS: pass its [SEP]."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    buffer: list[int] = []
    for document in documents:
        buffer.extend(document)
        if eos_token_id is not None:
            buffer.append(eos_token_id)
        while len(buffer) >= block_size:
            yield buffer[:block_size]
            buffer = buffer[block_size:]
    if buffer and not drop_last:
        yield buffer


def _rows(rows) -> list[list[int]]:
    """Blocks as lists of ids: from lists, `Example`s (their input_ids), 1-D tensors or a (B, T) tensor."""
    if isinstance(rows, torch.Tensor):
        return rows.tolist()
    ids = [getattr(row, "input_ids", row) for row in rows]
    return [row.tolist() if isinstance(row, (torch.Tensor, np.ndarray)) else list(row) for row in ids]


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and their attention mask (B, T)."""
    width = max(map(len, rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


# ------------------------------------------------------------------ masked LM (BERT)
class MLMCollator:
    """Blocks -> a masked-LM batch: input_ids, attention_mask, labels (B, T); labels -100 where unmasked.

    Each non-special token is chosen with probability `mlm_probability` (whole_word=True: each word,
    and then all its tokens); a chosen token becomes `mask_token_id` (mask_share, 80%), a random
    non-special token (random_share, 10%) or stays (the rest, 10%), and is the one label scored.
    Special ids (and padding) are never chosen. Whole words: `word_continuation[i]` is True for a
    token id that continues the word before it (WordPiece's "##" pieces); a token after a special
    one starts a word. `from_tokenizer` fills in every id from a tokenizer.
    """

    def __init__(self, mask_token_id: int, vocab_size: int, special_ids: Iterable[int] = (), pad_token_id: int = 0,
                 mlm_probability: float = 0.15, mask_share: float = 0.8, random_share: float = 0.1,
                 whole_word: bool = False, word_continuation: Sequence[bool] | torch.Tensor | None = None,
                 seed: int = 0):
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if mask_share < 0 or random_share < 0 or mask_share + random_share > 1:
            raise ValueError(f"mask_share {mask_share} and random_share {random_share} must be shares of 1")
        if whole_word and word_continuation is None:
            raise ValueError("whole_word=True needs word_continuation (or build the collator with from_tokenizer)")
        self.mask_token_id, self.vocab_size, self.pad_token_id = mask_token_id, vocab_size, pad_token_id
        self.mlm_probability, self.mask_share, self.random_share = mlm_probability, mask_share, random_share
        self.whole_word = whole_word
        self.special = torch.zeros(vocab_size, dtype=torch.bool)   # (V,) never chosen
        self.special[[*special_ids, pad_token_id, mask_token_id]] = True
        self.random_ids = (~self.special).nonzero().squeeze(1)     # what a random replacement draws from
        self.continuation = (torch.as_tensor(word_continuation, dtype=torch.bool)
                             if word_continuation is not None else None)
        if self.continuation is not None and self.continuation.shape != (vocab_size,):
            raise ValueError(f"word_continuation needs one flag per id ({vocab_size}), got {self.continuation.shape}")
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_tokenizer(cls, tokenizer, **options) -> "MLMCollator":
        """Ids from a gencycle `Tokenizer` (WordPiece, or byte-level / Metaspace pieces for whole words)."""
        mask = tokenizer.special_tokens.get("mask_token")
        if mask is None:
            raise ValueError("masked LM needs a mask token, and this tokenizer names none (mask_token)")
        if options.get("whole_word"):
            options.setdefault("word_continuation", word_continuation(tokenizer))
        pad = tokenizer.pad_token_id
        return cls(tokenizer.convert_tokens_to_ids(mask), tokenizer.vocab_size, tokenizer.all_special_ids,
                   0 if pad is None else pad, **options)

    def __call__(self, rows) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = _padded(_rows(rows), self.pad_token_id)  # (B, T)
        if input_ids.numel() and (int(input_ids.max()) >= self.vocab_size or int(input_ids.min()) < 0):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got up to {int(input_ids.max())}")
        candidates = ~self.special[input_ids] & attention_mask.bool()
        draw = torch.rand(input_ids.shape[0], input_ids.shape[1] + 1, generator=self.generator)
        if self.whole_word:  # one draw per word: word k of a row reads draw[:, k]
            starts = ~self.continuation[input_ids] | ~_after(candidates)
            words = starts.long().cumsum(1)                                      # (B, T) word number
            chosen = draw.gather(1, words) < self.mlm_probability
        else:
            chosen = draw[:, :-1] < self.mlm_probability
        chosen &= candidates
        labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
        action = torch.rand(input_ids.shape, generator=self.generator)
        masked = chosen & (action < self.mask_share)
        randomized = chosen & (action >= self.mask_share) & (action < self.mask_share + self.random_share)
        picks = self.random_ids[torch.randint(len(self.random_ids), input_ids.shape, generator=self.generator)]
        input_ids = torch.where(masked, self.mask_token_id, torch.where(randomized, picks, input_ids))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _after(candidates: torch.Tensor) -> torch.Tensor:
    """(B, T): True where the position before is a maskable token (so a continuation joins its word)."""
    before = torch.zeros_like(candidates)
    before[:, 1:] = candidates[:, :-1]
    return before


def word_continuation(tokenizer) -> torch.Tensor:
    """(V,) True for ids that continue the word before them: WordPiece's "##" pieces, or for byte-level
    BPE (GPT-2's "Ġ") and Metaspace (sentencepiece's "▁") tokenizers the pieces without the word mark."""
    backend = tokenizer.backend
    spec = json.loads(backend.to_str())
    flags = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    if spec["model"]["type"] == "WordPiece":
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
        is_continuation = lambda token: token.startswith(prefix)  # noqa: E731
    else:
        mark = "\u0120" if "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) else "\u2581"
        is_continuation = lambda token: not token.startswith(mark)  # noqa: E731
    for token, i in backend.get_vocab(with_added_tokens=False).items():
        flags[i] = is_continuation(token)
    return flags


# ------------------------------------------------------------------ span corruption (T5)
def random_spans_noise_mask(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    """T5's noise mask over `length` tokens: (length,) bool, True on the noise.

    round(length * noise_density) noise tokens (at least 1, at most length - 1) in
    round(noise / mean_span_length) spans (at least 1); noise and non-noise tokens are each cut
    into that many segments at random, and the spans alternate, non-noise first.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if length < 2:
        return np.zeros(length, dtype=bool)
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = min(max(round(num_noise / mean_span_length), 1), length - num_noise)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    kept_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)  # kept, noise, kept, noise, ...
    return np.repeat(np.tile([False, True], num_spans), interleaved)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths (num_segments,) of a uniformly random cut of num_items items into non-empty segments."""
    cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_span_length: float = 3.0) -> tuple[int, int]:
    """(raw block length, targets length) for encoder inputs of exactly `inputs_length` ids (T5's
    random_spans_helper): pack raw blocks of the first number. 512 -> (568, 114)."""
    def lengths(raw: int) -> tuple[int, int]:
        noise = round(raw * noise_density)
        spans = round(noise / mean_span_length)
        return raw - noise + spans + 1, noise + spans + 1  # + one sentinel per span, + EOS

    raw = inputs_length
    while lengths(raw + 1)[0] <= inputs_length:
        raw += 1
    return raw, lengths(raw)[1]


class SpanCorruptionCollator:
    """Blocks -> a T5 span-corruption batch: input_ids, attention_mask, labels, decoder_input_ids.

    For each row a noise mask (`random_spans_noise_mask`); the inputs keep the non-noise tokens with
    each noise span replaced by one sentinel, and the targets are, for each span, its sentinel and
    its tokens; both end with EOS. Span k takes sentinel_ids[k]: T5's <extra_id_k>, the ids that
    count down from the end of its vocabulary. Decoder inputs are the labels shifted right behind
    `decoder_start_token_id` (T5: the pad id). Rows of unequal length are right-padded.
    """

    def __init__(self, sentinel_ids: Sequence[int], eos_token_id: int, pad_token_id: int = 0,
                 decoder_start_token_id: int | None = None, noise_density: float = 0.15,
                 mean_span_length: float = 3.0, seed: int = 0):
        if not 0 < noise_density < 1:
            raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
        if mean_span_length < 1:
            raise ValueError(f"mean_span_length must be at least 1, got {mean_span_length}")
        if not sentinel_ids:
            raise ValueError("span corruption needs sentinel ids (T5's <extra_id_N> tokens)")
        self.sentinel_ids = np.asarray(sentinel_ids, dtype=np.int64)
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.decoder_start_token_id = pad_token_id if decoder_start_token_id is None else decoder_start_token_id
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_tokenizer(cls, tokenizer, **options) -> "SpanCorruptionCollator":
        """Sentinels <extra_id_0>, <extra_id_1>, ... as far as the vocabulary has them; EOS and pad from it."""
        sentinels = []
        while (i := tokenizer.convert_tokens_to_ids(f"<extra_id_{len(sentinels)}>")) is not None:
            sentinels.append(i)
        if not sentinels:
            raise ValueError("this tokenizer has no <extra_id_N> sentinels for span corruption "
                             "(train one with kind='unigram', or pass sentinel_ids)")
        if tokenizer.eos_token_id is None:
            raise ValueError("span corruption needs an EOS token, and this tokenizer names none")
        return cls(sentinels, tokenizer.eos_token_id, tokenizer.pad_token_id, **options)

    def corrupt(self, tokens: Sequence[int]) -> tuple[list[int], list[int]]:
        """One row: (inputs, targets) as lists of ids, both ending with EOS."""
        tokens = np.asarray(tokens, dtype=np.int64)
        noise = random_spans_noise_mask(len(tokens), self.noise_density, self.mean_span_length, self.rng)
        starts = noise & ~np.concatenate([[False], noise[:-1]])          # first token of each span
        spans = int(starts.sum())
        if spans > len(self.sentinel_ids):
            raise ValueError(f"a row of {len(tokens)} tokens has {spans} noise spans, more than the "
                             f"{len(self.sentinel_ids)} sentinels: use shorter rows or more extra ids")
        sentinels = self.sentinel_ids[:spans]
        span = np.maximum(np.cumsum(starts) - 1, 0)                      # (L,) span number, at its tokens
        inputs = np.where(starts, sentinels[span], tokens)[~noise | starts]  # a span -> its sentinel
        targets = np.insert(tokens[noise], (np.cumsum(noise) - 1)[starts], sentinels)  # sentinel before each span
        return [*inputs.tolist(), self.eos_token_id], [*targets.tolist(), self.eos_token_id]

    def __call__(self, rows) -> dict[str, torch.Tensor]:
        pairs = [self.corrupt(row) for row in _rows(rows)]
        input_ids, attention_mask = _padded([inputs for inputs, _ in pairs], self.pad_token_id)
        labels, _ = _padded([targets for _, targets in pairs], IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "decoder_input_ids": shift_right(labels, self.decoder_start_token_id, self.pad_token_id)}
