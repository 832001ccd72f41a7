"""`pretrain(data, tokenizer, PretrainConfig(...))`: a transformer trained from scratch on a text corpus.

    corpus (named or files) --split--> train / validation documents (disjoint)
    tokenizer: a folder, or trained there on the train documents (bpe / wordpiece / unigram by --arch)
    documents --encode--> ids --pack--> fixed-length blocks, documents ended by EOS ([SEP] for BERT)
        decoder          block of T + 1 ids: inputs [:-1], next-token targets [1:]     next_token_step
        encoder          [CLS] T - 2 ids [SEP], 15% masked (MLMCollator)                masked_lm_step
        encoder-decoder  raw blocks that span corruption turns into T encoder ids      span_corruption_step
    Trainer(...).train()   validation loss every --eval-every steps, samples every --sample-every
                           (decoders), checkpoints and exact resume, DDP / FSDP under torchrun
    run folder: model/ (Hugging Face layout + tokenizer), loss_curve.png, metrics.jsonl, report.json

Masks and noise spans are drawn from a generator seeded by (seed, epoch, block number), so a block
gets the same corruption however many processes share the batch and after a resume; validation
blocks keep one corruption for every evaluation. `gencycle pretrain` is generated from
`PretrainConfig` and the configs it holds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Sequence, get_args

import numpy as np
import torch
import torch.nn.functional as F

from gencycle.compute import training_flops as _training_flops
from gencycle.data.corpora import Corpus, load_corpus
from gencycle.errors import OptionError, check_output
from gencycle.model.config import PRESETS as MODEL_PRESETS
from gencycle.model.config import ModelConfig, preset
from gencycle.training import distributed
from gencycle.training.data import IGNORE_INDEX, shift_right
from gencycle.training.loop import TrainConfig, Trainer, seed_everything
from gencycle.training.objectives import masked_lm_step, masked_tokens, scored_tokens, span_corruption_step
from gencycle.training.pretraining_objectives import (
    MLMCollator, SpanCorruptionCollator, pack_tokens, span_corruption_lengths,
)

from . import steps
from .config import RunConfig, override

Arch = Literal["decoder", "encoder", "encoder-decoder"]
ARCHS = get_args(Arch)
TokenizerKind = Literal["bpe", "wordpiece", "unigram"]
TOKENIZER_KIND = {"decoder": "bpe", "encoder": "wordpiece", "encoder-decoder": "unigram"}
DEFAULT_PRESET = {"decoder": "gpt-mini", "encoder": "bert-mini", "encoder-decoder": "t5-mini"}

# Sizes for pretraining from scratch, as Hugging Face configs of their family (so what is trained is
# what `transformers` loads); the vocabulary size and special ids come from the tokenizer.
PRETRAIN_PRESETS: dict[str, tuple[str, str, dict]] = {
    # GPT-2's block (learned positions, LayerNorm, GELU MLP), nanoGPT-sized
    "gpt-nano": ("decoder", "gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    "gpt-micro": ("decoder", "gpt2", dict(n_embd=128, n_layer=4, n_head=4, n_positions=256)),
    "gpt-mini": ("decoder", "gpt2", dict(n_embd=256, n_layer=6, n_head=8, n_positions=256)),
    # Llama's block (RoPE, RMSNorm, SwiGLU); llama-20m (19.1M parameters with an 8k vocabulary) is the
    # pretraining benchmark's size
    "llama-mini": ("decoder", "llama", dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                                            num_key_value_heads=4, intermediate_size=688,
                                            max_position_embeddings=512, tie_word_embeddings=True)),
    "llama-20m": ("decoder", "llama", dict(hidden_size=384, num_hidden_layers=9, num_attention_heads=6,
                                           intermediate_size=1024, max_position_embeddings=512,
                                           tie_word_embeddings=True)),
    "bert-nano": ("encoder", "bert", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=256, max_position_embeddings=512, type_vocab_size=2,
                                          architectures=["BertForMaskedLM"])),
    "bert-mini": ("encoder", "bert", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                          intermediate_size=1024, max_position_embeddings=512,
                                          type_vocab_size=2, architectures=["BertForMaskedLM"])),
    "t5-nano": ("encoder-decoder", "t5", dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                              feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "t5-mini": ("encoder-decoder", "t5", dict(d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=4,
                                              feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}


# ------------------------------------------------------------------ configs
@dataclass
class CorpusConfig:
    """The corpus, its tokenizer and its blocks."""

    block_size: int = 256
    """tokens per training row: the decoder's context; the encoder's row with [CLS] and [SEP]; the T5 encoder's input"""
    validation_fraction: float = 0.05
    """share of the corpus held out for validation (whole documents when there are enough)"""
    eval_blocks: int | None = 128
    """validation blocks scored at each evaluation (None: all)"""
    max_documents: int | None = None
    """use the corpus's first N documents only (a quick try)"""
    tokenizer_kind: TokenizerKind | None = None
    """kind of tokenizer trained when --tokenizer names a folder without one (default by --arch:
    decoder bpe, encoder wordpiece, encoder-decoder unigram)"""
    tokenizer_vocab_size: int = 8192
    """ids of that tokenizer, special tokens included"""
    whole_word: bool = False
    """masked LM: mask whole words (all their tokens) instead of single tokens"""

    def __post_init__(self):
        if self.block_size < 8:
            raise OptionError("block_size", "must be at least 8 tokens", self.block_size)
        if not 0 < self.validation_fraction < 1:
            raise OptionError("validation_fraction", "must be in (0, 1)", self.validation_fraction)
        for name in ("eval_blocks", "max_documents"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise OptionError(name, "must be positive", value)
        if self.tokenizer_kind is not None and self.tokenizer_kind not in get_args(TokenizerKind):
            raise OptionError("tokenizer_kind", "must be bpe, wordpiece or unigram", self.tokenizer_kind)
        if self.tokenizer_vocab_size <= 0:
            raise OptionError("tokenizer_vocab_size", "must be positive", self.tokenizer_vocab_size)


@dataclass
class SampleConfig:
    """Text sampled from a decoder while it trains."""

    sample_every: int | None = 200
    """steps between samples (decoders; 0 or None: only before and after training; not under FSDP)"""
    sample_prompts: tuple[str, ...] | None = None
    """prompts the samples continue (default: the corpus's own)"""
    sample_tokens: int = 40
    """new tokens per sample"""
    temperature: float = 0.8
    """sampling temperature, >= 0 (0: greedy, the most likely token each step)"""
    top_k: int = 40
    """sample among the k most likely tokens (0: all)"""

    def __post_init__(self):
        for name, value, low in (("sample_every", self.sample_every, 0), ("sample_tokens", self.sample_tokens, 1),
                                 ("temperature", self.temperature, 0), ("top_k", self.top_k, 0)):
            if value is not None and not value >= low:
                raise OptionError(name, f"must be at least {low}", value)
        if self.sample_prompts is not None:
            self.sample_prompts = (self.sample_prompts,) if isinstance(self.sample_prompts, str) \
                else tuple(self.sample_prompts)
            if not self.sample_prompts or not all(isinstance(p, str) and p.strip() for p in self.sample_prompts):
                raise OptionError("sample_prompts", "must be non-empty texts (an empty prompt is never sampled)",
                                  self.sample_prompts)


def _pretrain_defaults() -> TrainConfig:
    return TrainConfig(batch_size=16, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=20,
                       min_lr_ratio=0.1, eval_every=100, checkpoint_every=500)


@dataclass
class PretrainConfig:
    """What to pretrain, on what, and how."""

    arch: Arch = "decoder"
    """decoder (GPT: causal LM), encoder (BERT: masked LM) or encoder-decoder (T5: span corruption)"""
    config: str | None = None
    """model size: a preset (decoders gpt-nano, gpt-micro, gpt-mini, llama-mini, llama-20m; encoders
    bert-nano, bert-mini; encoder-decoders t5-nano, t5-mini; or a model preset such as gpt2-124m) or a
    config .json (gencycle's ModelConfig or a Hugging Face config.json); default by --arch: gpt-mini,
    bert-mini, t5-mini"""
    compile: bool = False
    """run each training step as a torch.compile graph (faster steps after a first slow one)"""
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/pretrain"),
                           metadata={"set_by_workflow": ("dtype",)})  # built in fp32, trained under --precision
    data: CorpusConfig = field(default_factory=CorpusConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=_pretrain_defaults, metadata={
        "set_by_workflow": ("out_dir", "save_trainable_only", "extra")})

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise OptionError("arch", f"must be one of {', '.join(ARCHS)}", self.arch)
        if self.run.resume and self.run.out is None:
            raise OptionError("resume", "", message="resume needs the run folder (out) holding the checkpoints")

    def train_config(self) -> TrainConfig:
        out = str(self.run.out) if self.run.out is not None else None
        return dataclasses.replace(self.train, out_dir=out, save_trainable_only=False)


# ------------------------------------------------------------------ the model's config
def model_config(source: str | None, arch: str, tokenizer) -> ModelConfig:
    """The ModelConfig for a preset name or a config .json, sized to the tokenizer's vocabulary.

    Presets take the tokenizer's vocabulary size; a .json's `vocab_size` (when it gives one) must
    hold every id of the tokenizer. Special ids come from the tokenizer.
    """
    from gencycle.checkpoints import FAMILY_MODULE, family_of
    from gencycle.compute import check_config
    source = source or DEFAULT_PRESET[arch]
    vocab = tokenizer.vocab_size
    if source in PRETRAIN_PRESETS:
        _, family, values = PRETRAIN_PRESETS[source]
        config = FAMILY_MODULE[family].config_from_hf({**values, "vocab_size": vocab})
    elif source in MODEL_PRESETS:
        config = preset(source, vocab_size=vocab)
    elif source.endswith(".json"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise OptionError("config", f"names no preset, and no file {str(path)!r} exists")
        from gencycle.checkpoints import read_json
        values = read_json(path)  # names the file: not UTF-8, not JSON, not an object
        values.setdefault("vocab_size", vocab)
        try:
            config = (family_of(values).config_from_hf(values) if "model_type" in values
                      else ModelConfig.from_dict(values))
        except KeyError as e:
            raise ValueError(f"model config {str(path)!r} lacks the field {e.args[0]!r} "
                             f"its model_type {values.get('model_type')!r} needs") from None
        except TypeError as e:
            raise ValueError(f"model config {str(path)!r}: {e}") from None
        if config.vocab_size < vocab:
            raise ValueError(f"the tokenizer has {vocab} ids, more than the model's embedding table "
                             f"(vocab_size {config.vocab_size} in {str(path)!r}): raise vocab_size to at least "
                             f"{vocab}, or train a smaller tokenizer")
    else:
        names = ", ".join([*PRETRAIN_PRESETS, *MODEL_PRESETS])
        raise OptionError("config", f"is no preset ({names}) nor a config .json file", source)
    if config.architecture != arch:
        raise OptionError("config", f"{source!r} is an {config.architecture} model, not --arch {arch}")
    if config.family not in FAMILY_MODULE:
        raise OptionError("config", f"{source!r} has family {config.family!r}, which has no Hugging Face layout to "
                          f"save the trained model in; use one of {', '.join(FAMILY_MODULE)}")
    check_config(config)  # sizes positive, hidden size divisible by the heads
    eos = tokenizer.eos_token_id
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    if arch == "decoder":
        ids["pad_token_id"] = token_id(tokenizer, "pad_token")  # packed blocks have no padding; GPT-2 names none
    if arch == "encoder":
        ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=None, bos_token_id=None)
    if arch == "encoder-decoder":
        ids["decoder_start_token_id"] = tokenizer.pad_token_id
    return config.replace(**ids)


# ------------------------------------------------------------------ the tokenizer
def token_id(tokenizer, role: str) -> int | None:
    """The id of the token the tokenizer names for `role` ("pad_token", "cls_token", ...), or None."""
    token = tokenizer.special_tokens.get(role)
    return None if token is None else tokenizer.convert_tokens_to_ids(token)


def prepare_tokenizer(tokenizer, train_texts: list[str], arch: str, data: CorpusConfig, dist):
    """A Tokenizer object as is; a folder holding tokenizer.json loaded; any other folder gets one
    trained on the training texts (by the main process; the others wait, then load it).
    Returns (tokenizer, trained: bool)."""
    from gencycle.tokenizer import Tokenizer, load_tokenizer
    if isinstance(tokenizer, Tokenizer):
        return tokenizer, False
    if tokenizer is None:
        raise ValueError("pretraining needs a tokenizer: a folder to load one from or to train one into")
    folder = Path(tokenizer).expanduser()
    if folder.is_file():
        raise ValueError(f"--tokenizer {str(folder)!r} is a file; give the folder that holds tokenizer.json")
    has = (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()
    if not has:
        if dist.is_main:
            from gencycle.training.tokenizer_training import train_tokenizer_from_texts
            kind = data.tokenizer_kind or TOKENIZER_KIND[arch]
            train_tokenizer_from_texts(train_texts, kind, data.tokenizer_vocab_size, folder,
                                       model_max_length=data.block_size, show_progress=False,
                                       length=len(train_texts))
        dist.barrier()
    elif data.tokenizer_kind is not None or data.tokenizer_vocab_size != CorpusConfig.tokenizer_vocab_size:
        import warnings
        warnings.warn(f"--tokenizer-kind and --tokenizer-vocab-size train a tokenizer into a folder without one; "
                      f"{str(folder)!r} has one, loaded as it is: they are ignored")
    return load_tokenizer(folder), not has


# ------------------------------------------------------------------ blocks
class Block(NamedTuple):
    """One row of a split: its number, its ids (L,), whether it is a validation block (one corruption
    for every evaluation), and whether its targets count (a filler row scores nothing)."""
    index: int
    input_ids: torch.Tensor
    fixed: bool
    scored: bool = True


def even_shares(blocks: list[Block], world_size: int) -> list[Block]:
    """`blocks` with unscored copies of the first one added so every process evaluates as many rows
    (a sharded model's forward is a collective: each process must run the same number of them)."""
    filler = blocks[0]._replace(scored=False)
    return blocks + [filler] * (-len(blocks) % world_size)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens (the fast tokenizer's batch call)."""
    return [e.ids for e in tokenizer.backend.encode_batch(texts, add_special_tokens=False)]


def block_layout(arch: str, block_size: int, tokenizer) -> tuple[int, int | None, list[int], list[int]]:
    """(ids packed per row, separator between documents, ids put before / after each row)."""
    if arch == "decoder":
        return block_size + 1, tokenizer.eos_token_id, [], []
    if arch == "encoder":
        cls, sep = token_id(tokenizer, "cls_token"), token_id(tokenizer, "sep_token")
        if cls is None or sep is None:
            raise ValueError("masked-LM pretraining needs a tokenizer with [CLS] and [SEP] tokens "
                             "(a wordpiece one: --tokenizer-kind wordpiece, into a new --tokenizer folder)")
        return block_size - 2, sep, [cls], [sep]
    if tokenizer.eos_token_id is None:
        raise ValueError("span-corruption pretraining needs a tokenizer with an EOS token (a unigram one)")
    raw, _ = span_corruption_lengths(block_size)  # what corrupts into block_size encoder ids (EOS included)
    return raw, tokenizer.eos_token_id, [], []


def make_blocks(documents: list[list[int]], arch: str, block_size: int, tokenizer, fixed: bool,
                limit: int | None = None) -> list[Block]:
    length, separator, before, after = block_layout(arch, block_size, tokenizer)
    rows = [before + row + after for row in pack_tokens(documents, length, separator)]
    if limit is not None and len(rows) > limit:  # spread over the split, not its first part
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    table = torch.tensor(rows, dtype=torch.long) if rows else torch.zeros(0, length, dtype=torch.long)
    return [Block(i, table[i], fixed) for i in range(len(rows))]


def next_token_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Causal LM over packed blocks: logits (B, T, V) at every position against the next ids (B, T),
    the mean over the targets that count (-100: none; 0, not NaN, when no target counts)."""
    logits = model(batch["input_ids"]).logits
    targets = batch["targets"].flatten()
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return nll / (targets != IGNORE_INDEX).sum().clamp(min=1)


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["targets"] != IGNORE_INDEX).sum())


class Batches:
    """Blocks -> the batches of the architecture's objective.

    Decoder: input_ids = block[:-1], targets = block[1:]. Encoder / encoder-decoder: each block
    through the MLM / span-corruption collator, with its generator seeded by (seed, epoch, block
    number) for training blocks and (seed, block number) for validation ones. `epoch` is read from
    the trainer's sampler (set `batches.sampler` once the Trainer exists).
    """

    def __init__(self, arch: str, tokenizer, seed: int, whole_word: bool = False):
        self.arch, self.seed, self.sampler = arch, seed, None
        self.pad_token_id = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
        self.collator = None
        if arch == "encoder":
            self.collator = MLMCollator.from_tokenizer(tokenizer, whole_word=whole_word, seed=seed)
        elif arch == "encoder-decoder":
            self.collator = SpanCorruptionCollator.from_tokenizer(tokenizer, seed=seed)

    def _seed(self, block: Block) -> np.random.SeedSequence:
        epoch = 0 if block.fixed or self.sampler is None else self.sampler.epoch + 1
        return np.random.SeedSequence([self.seed, int(block.fixed), epoch, block.index])

    def __call__(self, blocks: list[Block]) -> dict[str, torch.Tensor]:
        if self.arch == "decoder":
            rows = torch.stack([b.input_ids for b in blocks])   # (B, T + 1)
            targets = rows[:, 1:].masked_fill(~torch.tensor([b.scored for b in blocks])[:, None], IGNORE_INDEX)
            return {"input_ids": rows[:, :-1], "targets": targets}
        parts = []
        for block in blocks:
            seed = self._seed(block)
            if self.arch == "encoder":
                self.collator.generator.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> 1))
            else:
                self.collator.rng = np.random.default_rng(seed)
            part = self.collator([block.input_ids])
            if not block.scored:
                part["labels"] = torch.full_like(part["labels"], IGNORE_INDEX)
            parts.append(part)
        return _concat(parts, self.pad_token_id)


def _concat(parts: list[dict[str, torch.Tensor]], pad: int) -> dict[str, torch.Tensor]:
    """One-row batches -> one batch, right-padded (labels with -100); decoder inputs re-derived."""
    fill = {"labels": IGNORE_INDEX, "attention_mask": 0}
    out = {}
    for key in parts[0]:
        if key == "decoder_input_ids":
            continue
        width = max(p[key].shape[1] for p in parts)
        out[key] = torch.cat([F.pad(p[key], (0, width - p[key].shape[1]), value=fill.get(key, pad)) for p in parts])
    if "decoder_input_ids" in parts[0]:
        out["decoder_input_ids"] = shift_right(out["labels"], pad, pad)
    return out


def objective(arch: str):
    """(step_fn, weight_fn) of an architecture's pretraining objective."""
    return {"decoder": (next_token_step, target_tokens), "encoder": (masked_lm_step, masked_tokens),
            "encoder-decoder": (span_corruption_step, scored_tokens)}[arch]


# ------------------------------------------------------------------ samples
@torch.no_grad()
def draw_samples(model, tokenizer, prompts: Sequence[str], config: SampleConfig, seed: int) -> list[str]:
    """Prompt + sampled continuation of each prompt (a seeded generator of its own: the run's random
    state is not touched); the model's train / eval mode is left as it was."""
    from gencycle.generation import LLM
    was_training = model.training
    model.eval()
    room = model.config.max_position_embeddings - config.sample_tokens
    kept = [p for p in prompts if 0 < len(tokenizer.encode(p)) <= room]
    sampling = dict(do_sample=True, temperature=config.temperature, top_k=config.top_k, seed=seed) \
        if config.temperature > 0 else dict(do_sample=False)
    texts = LLM(model, tokenizer).generate(kept, max_new_tokens=config.sample_tokens, **sampling) if kept else []
    model.train(was_training)
    return [prompt + text for prompt, text in zip(kept, texts)]


class PretrainTrainer(Trainer):
    """The training loop, with samples drawn every `sample_every` steps (decoders, main process)."""

    def __init__(self, *args, sample=None, sample_every: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample, self.sample_every = sample, sample_every

    def train_step(self) -> dict:
        record = super().train_step()
        if self.sample is not None and self.sample_every and self.step % self.sample_every == 0 \
                and self.step < self.max_steps and self.dist.is_main:
            record["samples"] = self.sample(self.module)
            from tqdm.auto import tqdm
            for text in record["samples"]:
                tqdm.write(f"[step {self.step}] {text!r}")
        return record


# ------------------------------------------------------------------ the workflow
@dataclass
class PretrainResult:
    arch: str
    model_config: str
    corpus: str
    out_dir: Path | None
    parameters: int
    tokenizer_trained: bool
    vocab_size: int
    words: int
    train_blocks: int
    validation_blocks: int
    block_size: int
    tokens_seen: int
    train_seconds: float
    peak_memory_bytes: int
    memory_kind: str
    history: list[dict]
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    samples_before: list[str] = field(default_factory=list)
    samples_after: list[str] = field(default_factory=list)
    training_flops: float = 0.0           # model FLOPs of the tokens seen: 6ND + attention (gencycle.compute)
    main_process: bool = True             # False on the other processes of a torchrun job
    model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def perplexity_before(self) -> float | None:
        return _exp(self.eval_loss_before)

    @property
    def perplexity_after(self) -> float | None:
        return _exp(self.eval_loss_after)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / max(self.train_seconds, 1e-9)

    @property
    def validation(self) -> list[dict]:
        return [{"step": h["step"], "eval_loss": h["eval_loss"], "perplexity": _exp(h["eval_loss"])}
                for h in self.history if "eval_loss" in h]

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("model", "history", "out_dir", "main_process")}
        out.update(out_dir=str(self.out_dir) if self.out_dir else None, steps=len(self.history),
                   perplexity_before=self.perplexity_before, perplexity_after=self.perplexity_after,
                   tokens_per_s=self.tokens_per_s, validation=self.validation,
                   samples_during=[{"step": h["step"], "samples": h["samples"]} for h in self.history
                                   if "samples" in h])
        return out

    def summary(self) -> str:
        unit = {"decoder": "next-token", "encoder": "masked-token", "encoder-decoder": "span-target"}[self.arch]
        lines = [f"{self.arch} {self.model_config}: {self.parameters:,} parameters, vocabulary {self.vocab_size}"
                 f"{' (tokenizer trained on the corpus)' if self.tokenizer_trained else ''}",
                 f"corpus {self.corpus}: {self.words:,} words -> {self.train_blocks:,} training and "
                 f"{self.validation_blocks:,} validation blocks of {self.block_size} tokens",
                 f"trained {len(self.history)} steps, {self.tokens_seen:,} tokens in {self.train_seconds:.1f} s "
                 f"({self.tokens_per_s:,.0f} tokens/s, {self.training_flops:.3g} model FLOPs), "
                 f"peak memory ({self.memory_kind}) "
                 f"{self.peak_memory_bytes / 2**20:,.0f} MiB"]
        if self.eval_loss_before is not None:
            lines.append(f"validation {unit} loss {self.eval_loss_before:.4f} -> {self.eval_loss_after:.4f} "
                         f"(perplexity {self.perplexity_before:,.1f} -> {self.perplexity_after:,.1f})")
        for name, texts in (("before", self.samples_before), ("after", self.samples_after)):
            lines += [f"sample {name}: {t!r}" for t in texts]
        return "\n".join(lines)


def training_flops(config: ModelConfig, tokens: int, block_size: int) -> float:
    return float(_training_flops(config, tokens, block_size)["total"])


def _exp(loss: float | None) -> float | None:
    return None if loss is None else math.exp(min(loss, 700.0))


def load_split(data, config: CorpusConfig) -> tuple[Corpus, list[str], list[str]]:
    corpus = load_corpus(data, config.max_documents)
    train, validation = corpus.split(config.validation_fraction)
    if not train or not validation:
        raise ValueError(f"corpus {corpus.name!r} has too little text to hold out a validation split")
    return corpus, train, validation


def pretrain(data: str | Path | Sequence[str | Path], tokenizer, config: PretrainConfig | None = None, /,
             **options) -> PretrainResult:
    """Pretrain a model from scratch on `data` (a corpus name: austen, chitchat; or text files /
    folders) with `tokenizer` (a Tokenizer, a folder holding one, or a folder to train one into),
    as `config` says; `options` override its fields by name (`config` among them is the model's):
    pretrain("austen", "runs/tok", arch="decoder", config="gpt-nano", max_steps=200, out=None)."""
    config = override(config or PretrainConfig(), **options)
    train_config = config.train_config()
    arch, cd = config.arch, config.data
    if config.run.out is not None:
        check_output(config.run.out, "out")
    dist = distributed.setup(config.run.device)
    corpus, train_texts, validation_texts = load_split(data, cd)
    tokenizer, tokenizer_trained = prepare_tokenizer(tokenizer, train_texts, arch, cd, dist)
    model_cfg = model_config(config.config, arch, tokenizer)
    if model_cfg.position != "relative" and cd.block_size > model_cfg.max_position_embeddings:
        raise OptionError("block_size", f"{cd.block_size} is longer than the model's context window of "
                          f"{model_cfg.max_position_embeddings} tokens")
    train_blocks = make_blocks(encode(tokenizer, train_texts), arch, cd.block_size, tokenizer, fixed=False)
    eval_blocks = make_blocks(encode(tokenizer, validation_texts), arch, cd.block_size, tokenizer, fixed=True,
                              limit=cd.eval_blocks)
    for name, blocks, texts in (("training", train_blocks, train_texts), ("validation", eval_blocks, validation_texts)):
        if not blocks:
            raise ValueError(f"the {name} split of {corpus.name!r} ({sum(map(len, texts)):,} characters) "
                             f"does not fill one block of {cd.block_size} tokens: lower --block-size"
                             + (" or raise --validation-fraction" if name == "validation" else ""))
    # the model, the batches, the loop
    seed_everything(train_config.seed)
    from gencycle.model import Transformer
    model = Transformer(model_cfg).to(dist.device)
    batches = Batches(arch, tokenizer, train_config.seed, cd.whole_word)
    step_fn, weight_fn = objective(arch)
    if config.compile:
        from gencycle.generation.compiled import has_cpp_compiler
        if dist.device.type == "cpu" and not has_cpp_compiler():
            raise ValueError("--compile on the CPU needs a C++ compiler (g++ or clang++) for torch.compile's kernels")
        step_fn = torch.compile(step_fn)
    prompts = list(config.samples.sample_prompts or corpus.prompts) if arch == "decoder" else []
    sample = (lambda m: draw_samples(m, tokenizer, prompts, config.samples, train_config.seed)) if prompts else None
    trainer = PretrainTrainer(model, train_config, train_blocks, eval_data=even_shares(eval_blocks, dist.world_size),
                              collate_fn=batches,
                              step_fn=step_fn, weight_fn=weight_fn, device=dist.device,
                              sample=sample, sample_every=config.samples.sample_every)
    batches.sampler = trainer.sampler
    out_dir = Path(config.run.out) if config.run.out is not None else None
    if config.run.resume:
        trainer.resume(True)  # says what it restored (or that there is no checkpoint: step 0)
    sharded = trainer.strategy == "fsdp"  # a sharded model samples only once gathered, after training
    if sharded:
        trainer.sample = None
    samples_before = sample(trainer.module) if sample is not None and not sharded and dist.is_main else []
    first_step = trainer.step  # 0, or the step resumed from
    trained = steps.train(trainer)
    # gather, sample after, save
    model = steps.gather(trainer, dist)  # collective under FSDP
    result = PretrainResult(
        arch=arch, model_config=config.config or DEFAULT_PRESET[arch], corpus=corpus.name, out_dir=out_dir,
        parameters=trained.parameters.total, tokenizer_trained=tokenizer_trained, vocab_size=tokenizer.vocab_size,
        words=corpus.words, train_blocks=len(train_blocks), validation_blocks=len(eval_blocks),
        block_size=cd.block_size, tokens_seen=trainer.tokens_seen, train_seconds=trained.seconds,
        peak_memory_bytes=trained.peak_memory_bytes, memory_kind=trained.memory_kind, history=trained.history,
        eval_loss_before=trained.eval_loss_before, eval_loss_after=trained.eval_loss_after,
        samples_before=samples_before, main_process=dist.is_main,
        training_flops=training_flops(model_cfg, trainer.tokens_seen, cd.block_size) if trainer.tokens_seen else 0.0)
    if dist.is_main:
        result.samples_after = sample(model) if sample is not None else []
        if out_dir is not None:
            steps.save(model, tokenizer, out_dir, adapter=False)
            plot_pretraining(result.history, out_dir / "loss_curve.png",
                             f"{arch} {result.model_config} on {corpus.name}",
                             None if trained.eval_loss_before is None else (first_step, trained.eval_loss_before))
            steps.write_report(out_dir, result.to_dict())
    result.model = model
    dist.barrier()
    return result


def plot_pretraining(history: list[dict], path: Path, title: str, start: tuple[int, float] | None = None) -> Path:
    """Training loss per step and validation loss (with its perplexity on the right axis) -> PNG.
    `start`: (step, validation loss) before the run's first step."""
    from matplotlib.figure import Figure  # no pyplot: the global backend (a notebook's) stays as it is
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train", linewidth=1, alpha=0.8)
    evals = sorted(([start] if start else []) + [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h])
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation", linewidth=1.5, markersize=4)
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats / token)", title=title)
    low, high = ax.get_ylim()
    right = ax.twinx()
    right.set_ylim(math.exp(low), math.exp(high))
    right.set_yscale("log")
    right.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
