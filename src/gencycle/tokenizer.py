"""Text <-> token ids: one `Tokenizer` over the `tokenizers` library.

`load_tokenizer` reads the formats a model arrives in and builds the same `tokenizers`
pipeline for each, so every id matches what Hugging Face `transformers` gives:

    folder with tokenizer.json       (+ tokenizer_config.json, special_tokens_map.json, chat_template.jinja)
    folder with only spiece.model    a T5 sentencepiece unigram model: `</s>` appended, 100 `<extra_id_N>`
    a .gguf file                     llama.cpp metadata of a byte-level BPE (`tokenizer.ggml.model == "gpt2"`)
    a packaged model name            see `gencycle.assets`

    tok = load_tokenizer("smollm2-135m-instruct")
    batch = tok(["Hi", "Hello there"], padding_side="left")      # input_ids, attention_mask: (B, T)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from gencycle.assets import cache_dir, resolve
from gencycle.errors import UserError

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "cls_token", "sep_token", "mask_token")
GGUF_SUPPORTED_MODELS = ("gpt2",)
# llama.cpp's `tokenizer.ggml.pre` -> the regex that splits text before BPE; any other name keeps
# GPT-2's own split (as transformers' GGUF loader does). Digits: up to 3 together (Llama 3) or 1 (Qwen 2).
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{}"
          r"| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_UNSUPPORTED_SPLITS = ("tekken", "gpt-4o", "llama4", "qwen35", "kanana2", "talkie", "minimax-m2")
GGUF_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), _SPLIT.format(r"\p{N}{1,3}")),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _SPLIT.format(r"\p{N}")),
}


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what a model needs around it: special tokens, padding, chat template.

    `pad_token_id` falls back to `eos_token_id` when the vocabulary names no pad token, as is usual
    for decoder-only models (the attention mask hides the padding either way).
    `all_special_ids` lists every added token flagged special: the ids `decode(skip_special_tokens=True)` drops.
    `model_max_length` is None where unknown; a GGUF gives its context length.
    """

    def __init__(self, backend: Backend, special_tokens: dict[str, str | None] | None = None,
                 chat_template: str | None = None, model_max_length: int | None = None,
                 padding_side: str = "right", clean_up_tokenization_spaces: bool = False):
        self.backend = backend
        self.special_tokens = {name: tok for name, tok in (special_tokens or {}).items() if tok is not None}
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        backend.no_padding()       # padding and truncation happen per call, so one
        backend.no_truncation()    # tokenizer can serve concurrent requests
        named = [AddedToken(t, special=True, normalized=False) for t in self.special_tokens.values()]
        added = {str(t) for t in backend.get_added_tokens_decoder().values()}
        backend.add_special_tokens([t for t in named if str(t) not in added])

    # ---- ids and tokens ------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(_text(text), add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a list (or 1-D tensor) of ids."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and not isinstance(self.backend.model, models.BPE):
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]

    def tokenize(self, text: str) -> list[str]:
        return self.backend.encode(_text(text), add_special_tokens=False).tokens

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        return self.backend.id_to_token(ids) if isinstance(ids, int) else [self.backend.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        to_id = self.backend.token_to_id
        return to_id(tokens) if isinstance(tokens, str) else [to_id(t) for t in tokens]

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))

    @property
    def pad_token_id(self) -> int | None:
        """The pad token's id, else the eos token's (see the class docstring)."""
        pad = self._special_id("pad_token")
        return self.eos_token_id if pad is None else pad

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    # ---- batches -------------------------------------------------------------------------
    def __call__(self, texts: str | list[str], padding: bool | str = True, padding_side: str | None = None,
                 truncation: bool = False, max_length: int | None = None, add_special_tokens: bool = True,
                 return_tensors: str | None = "pt") -> dict:
        """Encode a batch. Returns `input_ids` and `attention_mask`, (B, T) LongTensors (lists if return_tensors=None).

        padding: True / "longest" pads to the longest row, "max_length" to `max_length`, False not at all.
        truncation: cut each row to `max_length` (default `model_max_length`), special tokens included.
        """
        texts = [_text(t) for t in ([texts] if isinstance(texts, str) else list(texts))]
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        limit = max_length if max_length is not None else self.model_max_length
        if (truncation or padding == "max_length") and limit is None:
            raise ValueError("truncation and padding='max_length' need max_length (no model_max_length is known)")
        rows = []
        for encoding in self.backend.encode_batch(texts, add_special_tokens=False):
            if truncation:
                extra = self.backend.post_processor.num_special_tokens_to_add(False) \
                    if add_special_tokens and self.backend.post_processor else 0
                encoding.truncate(max(limit - extra, 0))
            rows.append(self.backend.post_process(encoding, add_special_tokens=add_special_tokens).ids)
        width = max(map(len, rows), default=0)
        if padding == "max_length":
            width = max(width, limit)
        if padding and any(len(r) != width for r in rows) and self.pad_token_id is None:
            raise ValueError("padding needs a pad token, and this tokenizer names neither a pad nor an eos token")
        input_ids, attention_mask = [], []
        for row in rows:
            fill = width - len(row) if padding else 0
            pad, ones = [self.pad_token_id] * fill, [1] * len(row)
            input_ids.append(pad + row if side == "left" else row + pad)
            attention_mask.append([0] * fill + ones if side == "left" else ones + [0] * fill)
        if return_tensors == "pt":
            if len({len(row) for row in input_ids}) > 1:
                raise ValueError("rows of different lengths make no tensor: pass padding=True or return_tensors=None")
            input_ids, attention_mask = (torch.tensor(rows, dtype=torch.long)
                                         for rows in (input_ids, attention_mask))
        elif return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ---- chat ----------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False,
                            chat_template: str | None = None, **kwargs) -> str | list[int]:
        """Render a conversation with the model's Jinja chat template, as `transformers` does.

        Extra keyword arguments (tools, documents, ...) are passed to the template. With tokenize=True
        the ids are returned, without adding special tokens again (the template writes them).
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template: pass chat_template=..., or use a model that has one")
        import jinja2
        variables = {"tools": None, "documents": None, **self.special_tokens, **kwargs}
        compiled = _compile_template(template)
        try:
            text = compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as error:  # raise_exception(...) in the template, or a bad expression
            raise UserError(f"the chat template refused this conversation: {error}") from None
        except (TypeError, KeyError, AttributeError) as error:
            raise UserError(f"the chat template failed on this conversation ({type(error).__name__}: {error}); "
                            "messages are dicts with 'role' and 'content' strings") from None
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # ---- saving --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (the layout transformers loads)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens,
                  "padding_side": self.padding_side, "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                  "model_max_length": self.model_max_length, "chat_template": self.chat_template}
        config = {key: value for key, value in config.items() if value is not None}
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", self.special_tokens)):
            (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
        return directory


def _text(text) -> str:
    """`text` if it is a string the tokenizer can take; else a UserError saying why. Bytes that were
    not UTF-8 reach Python as lone surrogates (from argv, or stdin in a C locale)."""
    if not isinstance(text, str):
        raise UserError(f"expected text (a str), got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise UserError(f"the text is not valid UTF-8: {byte} at character {error.start} (a lone surrogate: "
                        "was it read from bytes that are not UTF-8?)") from None
    return text


def _compile_template(template: str):
    """A chat template compiled in a sandbox; a Jinja syntax error is a UserError naming its line."""
    import jinja2
    try:
        return _compile(template)
    except jinja2.TemplateSyntaxError as error:
        lines = template.splitlines()
        near = lines[error.lineno - 1].strip()[:80] if 0 < error.lineno <= len(lines) else ""
        raise UserError(f"the chat template has a Jinja syntax error at line {error.lineno}: {error.message}"
                        + (f" (near {near!r})" if near else "")) from None


@lru_cache(maxsize=16)
def _compile(template: str):
    """A chat template compiled in a sandbox, with the helpers Hub templates expect."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


# ---- loading -------------------------------------------------------------------------------
def load_tokenizer(path: str | Path) -> Tokenizer:
    """Tokenizer of a model folder, a tokenizer.json / spiece.model / .gguf file, or a packaged model name."""
    path = resolve(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return _from_gguf(path)
        if path.suffix not in (".json", ".model"):
            raise UserError(f"{str(path)!r} is a file, not a model folder nor a tokenizer file (tokenizer.json, "
                            "spiece.model or a .gguf file)")
        folder, files = path.parent, [path]
    else:
        folder, files = path, [path / "tokenizer.json", path / "spiece.model"]
        ggufs = sorted(path.glob("*.gguf"))
        if not any(f.exists() for f in files) and len(ggufs) == 1:
            return _from_gguf(ggufs[0])
    config = _read_config(folder)
    for file in files:
        if file.exists() and file.suffix == ".json":
            return _from_tokenizer_json(file, config)
        if file.exists() and file.suffix == ".model":
            return _from_spiece(file, config)
    raise FileNotFoundError(f"no tokenizer file in {str(folder)!r}: looked for {', '.join(f.name for f in files)}"
                            " (or a single .gguf file)")


def _read_json(path: Path) -> dict:
    """A JSON object from a file; a malformed file, or one that is not an object, is a UserError naming it."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a JSON object ({{...}}), got a {type(values).__name__}")
    return values


def _read_config(folder: Path) -> dict:
    """tokenizer_config.json merged with special_tokens_map.json and chat_template.jinja, where present."""
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).exists():
            config.update(_read_json(folder / name))
    if (folder / "chat_template.jinja").exists():
        config["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        config["chat_template"] = next((t["template"] for t in template if t["name"] == "default"), None)
    for name in SPECIAL_NAMES:  # a token is a string, or a dict with its "content"
        if isinstance(config.get(name), dict):
            config[name] = config[name]["content"]
    return config


def _make_tokenizer(backend: Backend, config: dict) -> Tokenizer:
    max_length = config.get("model_max_length")
    return Tokenizer(backend, {name: config.get(name) for name in SPECIAL_NAMES}, config.get("chat_template"),
                     int(max_length) if max_length is not None and max_length < 1e29 else None,
                     config.get("padding_side", "right"), bool(config.get("clean_up_tokenization_spaces", False)))


def _from_tokenizer_json(file: Path, config: dict) -> Tokenizer:
    """tokenizer.json as saved; its post-processor alone decides BOS / EOS (add_bos_token in the config is
    ignored, as transformers 5 ignores it next to a tokenizer.json)."""
    try:
        backend = Backend.from_file(str(file))
    except Exception as error:  # the tokenizers library raises a bare Exception for a bad file
        detail = " ".join(str(error).split())[:200]
        raise UserError(f"{file}: not a readable tokenizer.json (truncated or not the tokenizers format?): "
                        f"{detail}") from None
    return _make_tokenizer(backend, config)


def _from_spiece(file: Path, config: dict) -> Tokenizer:
    """T5's sentencepiece unigram model: ids as transformers' T5Tokenizer gives them.

    The `extra_ids` sentinels follow the vocabulary in reverse (`<extra_id_0>` is the last id),
    and every encoding ends with `</s>`.
    """
    import sentencepiece

    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(file))
    except (RuntimeError, OSError) as error:
        raise UserError(f"{file}: not a readable sentencepiece model: {' '.join(str(error).split())[:200]}") from None
    proto = dict(_protobuf_fields(file.read_bytes()))
    model_type = dict(_protobuf_fields(proto.get(2, b""))).get(3, 1)  # trainer_spec.model_type, 1 is unigram
    if model_type != 1:
        raise ValueError(f"{file}: sentencepiece model type {model_type} is not supported; supported: 1 (unigram, T5)")
    extra_ids = int(config.get("extra_ids", 100))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    backend = Backend(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    charsmap = dict(_protobuf_fields(proto.get(3, b""))).get(2)  # normalizer_spec.precompiled_charsmap
    if charsmap:
        backend.normalizer = normalizers.Precompiled(charsmap)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    names = {"pad_token": sp.pad_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id()}
    specials = {name: config.get(name) or sp.id_to_piece(i) for name, i in names.items() if i >= 0}
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()]
                               + [AddedToken(t, special=True, normalized=False) for t, _ in vocab[-extra_ids:]])
    eos = specials["eos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))])
    return _make_tokenizer(backend, {**config, **specials})


def _protobuf_fields(data: bytes):
    """(field number, value) pairs of one protobuf message: just enough wire format to read a spiece.model."""
    def varint(pos):
        value = shift = 0
        while True:
            byte = data[pos]
            value, shift, pos = value | (byte & 0x7F) << shift, shift + 7, pos + 1
            if byte < 0x80:
                return value, pos

    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        wire = key & 7
        if wire == 0:
            value, pos = varint(pos)
        elif wire in (1, 5):  # fixed 64 / 32 bits
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == 2:       # length-delimited: bytes, strings, sub-messages
            size, pos = varint(pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in sentencepiece model")
        yield key >> 3, value


def _byte_spelling() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves,
    the other bytes take the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [byte for byte in range(256) if byte not in kept]
    return {**{byte: chr(byte) for byte in kept}, **{byte: chr(256 + n) for n, byte in enumerate(moved)}}


def _gguf_cache_folder(file: Path) -> Path:
    """Where `_from_gguf` keeps what it built from `file`: `$GENCYCLE_CACHE/tokenizers/<stem>-<key>` (default
    `~/.cache/gencycle`), keyed by the file's path, size and modification time and by this module's source."""
    resolved, code = file.resolve(), hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    st = resolved.stat()
    key = hashlib.sha256(f"{resolved}|{st.st_size}|{st.st_mtime_ns}|{code}".encode()).hexdigest()[:16]
    return cache_dir("tokenizers") / f"{resolved.stem}-{key}"


def _from_gguf(file: Path) -> Tokenizer:
    """`_build_from_gguf`, cached: reading a GGUF's 49k-token vocabulary through the gguf package takes
    2-3 s (most of a chat's start), loading the tokenizer.json written the first time a few hundredths."""
    folder = _gguf_cache_folder(file)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return _make_tokenizer(Backend.from_file(str(folder / "tokenizer.json")), config)
    except Exception:  # noqa: BLE001 - not cached yet, or an unreadable entry: build it (again)
        pass
    tokenizer, backend, config = _build_from_gguf(file)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:  # a read-only or full disk: the tokenizer works uncached
        return tokenizer
    try:
        backend.save(str(work / "tokenizer.json"))
        (work / "config.json").write_text(json.dumps(config), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(work, folder)  # whole or not at all
    except OSError:
        pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tokenizer


def _build_from_gguf(file: Path) -> tuple[Tokenizer, Backend, dict]:
    """A byte-level BPE from a GGUF's llama.cpp metadata, built the way transformers' GGUF loader builds it;
    also returns the backend and the config it was made from (for the cache)."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(file).fields
    except Exception as error:  # noqa: BLE001 - the reader raises ValueError, KeyError, ... on bad bytes
        raise UserError(f"{str(file)!r} is truncated or corrupt: the GGUF reader failed with "
                        f"{type(error).__name__}: {error}") from None

    def get(key, default=None):
        return fields[key].contents() if key in fields else default

    kind = get("tokenizer.ggml.model")
    if kind not in GGUF_SUPPORTED_MODELS:
        raise ValueError(f"{file.name}: GGUF tokenizer model {kind!r} is not supported; "
                         f"supported: {', '.join(GGUF_SUPPORTED_MODELS)} (byte-level BPE)")
    tokens, token_types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type", [])
    spelling = _byte_spelling()
    alphabet = set(spelling.values())
    # a token written outside the byte alphabet (a raw special string) is respelled byte by byte
    spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = {token: i for i, token in enumerate(spelled)}
    merges = [tuple(m.split(" ")) for m in get("tokenizer.ggml.merges", [])]
    backend = Backend(models.BPE(vocab, merges, fuse_unk=False))
    if (pre := get("tokenizer.ggml.pre")) in GGUF_UNSUPPORTED_SPLITS:
        raise ValueError(f"{file.name}: GGUF pre-tokenizer {pre!r} is not supported; supported: the GPT-2 split "
                         f"and {', '.join(sorted(GGUF_SPLITS))}")
    split = GGUF_SPLITS.get(pre)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), backend.pre_tokenizer])
    backend.decoder = decoders.ByteLevel()
    # llama.cpp token types: 3 control (special, kept whole), 4 user-defined (kept whole, not special)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, token_types) if kind == 3 and set(t) <= alphabet])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, token_types) if kind == 4 and t in vocab])
    config = {name: tokens[i] for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
              ("pad_token", "padding")) if (i := get(f"tokenizer.ggml.{key}_token_id")) is not None}
    config.update(chat_template=get("tokenizer.chat_template"),
                  model_max_length=get(f"{get('general.architecture')}.context_length"))
    bos = [config["bos_token"]] if get("tokenizer.ggml.add_bos_token") and "bos_token" in config else []
    eos = [config["eos_token"]] if get("tokenizer.ggml.add_eos_token") and "eos_token" in config else []
    single = bos + ["$A"] + eos
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=single + [f"{t}:1" for t in bos] + ["$B:1"] + [f"{t}:1" for t in eos],
        special_tokens=[(t, backend.token_to_id(t)) for t in bos + eos])
    return _make_tokenizer(backend, config), backend, config
