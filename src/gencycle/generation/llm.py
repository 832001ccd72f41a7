"""`LLM`: a model and its tokenizer behind text-in, text-out calls.

    llm = LLM.load("smollm2-135m-instruct")                    # or a model folder / .gguf file
    llm.generate("Once upon a time", max_new_tokens=40)       # -> str (the completion only)
    llm.generate(["Hi", "Hello"], do_sample=True, seed=0)     # -> list[str]
    llm.chat([{"role": "user", "content": "What is the capital of France?"}])
    for delta in llm.stream("Tell me a story", stop=["\\n\\n"]): print(delta, end="")

Calls share no mutable state, so one `LLM` can serve several threads or requests.

Sampling happens only with do_sample=True, as in `transformers`: temperature, top_k, top_p and
min_p given to a greedy or beam-search call are ignored, with a warning that says so
(`ignored_settings`); the `gencycle generate` / `chat` flags follow the same rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .compiled import compile_decoding
from .config import FILE_NAME, GenerationConfig
from .decoding import generate
from .stopping import cut_at_eos, cut_at_stop
from .streaming import stream

Messages = list[dict]
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}  # sampling settings and their off-values


def ignored_settings(config: GenerationConfig, given: Iterable[str]) -> list[str]:
    """The sampling settings among `given` that `config` does not use: it decodes greedily or by beam
    search (do_sample=False), and the setting is not at its off-value. ["temperature=1.5"], say."""
    if config.do_sample:
        return []
    return [f"{name}={getattr(config, name)}" for name in SAMPLING
            if name in given and getattr(config, name, SAMPLING[name]) != SAMPLING[name]]


class LLM:
    """Text generation with a loaded model. `generation_config` holds the defaults of every call
    (the model folder's generation_config.json when it has one); keyword overrides change one call."""

    def __init__(self, model, tokenizer, generation_config: GenerationConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.generation_config = generation_config or GenerationConfig()

    @classmethod
    def load(cls, name_or_path: str | Path | None = None, dtype=None, device=None, quantize: str | None = None,
             compile: bool = False) -> "LLM":
        """Load a packaged model name (default: the embedded SmolLM2), an HF folder or a .gguf file.
        compile: run greedy / sampling steps as compiled graphs (`compile_decoding`, ahead of time: a
        later process with the same weights loads them instead of compiling)."""
        from .. import assets
        from ..checkpoints import load_model
        from ..tokenizer import load_tokenizer

        from ..checkpoints.devices import resolve_device

        name_or_path = assets.DEFAULT_MODEL if name_or_path is None else name_or_path
        if device is not None:
            resolve_device(device)  # a device this machine lacks fails before the weights are read
        assets.resolve(name_or_path)  # so does a missing path
        extra = {} if quantize is None else {"quantize": quantize}
        tokenizer = load_tokenizer(name_or_path)  # cheap, so a broken tokenizer fails before the weights load
        model = load_model(name_or_path, dtype=dtype, device=device, **extra)
        if compile:
            compile_decoding(model, packages="auto")  # steps compiled ahead of time, found again by later processes
        path = assets.resolve(name_or_path)
        config = GenerationConfig.from_pretrained(path) if (path / FILE_NAME).is_file() else None
        return cls(model, tokenizer, config)

    # ---- configuration -----------------------------------------------------------------------
    def make_config(self, config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
        """The config a call runs with; EOS defaults to the model's plus the tokenizer's. Sampling
        settings in `overrides` that the config does not use (do_sample=False) are ignored, with a warning."""
        config = config if config is not None else self.generation_config
        config = config.replace(**overrides) if overrides else config
        ignored = ignored_settings(config, overrides)
        if ignored:
            warnings.warn(f"{', '.join(ignored)} ignored: do_sample is False, so decoding is "
                          f"{'beam search' if config.num_beams > 1 else 'greedy'} (pass do_sample=True to sample)",
                          UserWarning, stacklevel=4)
        if config.eos_token_id is None:
            eos = list(self.model.config.eos_token_ids)
            if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
                eos.append(self.tokenizer.eos_token_id)
            config = config.replace(eos_token_id=eos)
        if config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            config = config.replace(pad_token_id=self.tokenizer.pad_token_id)
        return config

    @property
    def encoder_decoder(self) -> bool:
        return self.model.config.architecture == "encoder-decoder"

    def format_chat(self, messages: Messages) -> str:
        """The prompt text of a conversation, rendered with the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def encode(self, texts: list[str], templated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ids, mask (B, T); left-padded for decoder-only models. A chat-templated prompt
        already holds its special tokens, so none are added."""
        side = "right" if self.encoder_decoder else "left"
        batch = self.tokenizer(texts, padding_side=side, add_special_tokens=not templated)
        return batch["input_ids"], batch["attention_mask"]

    def completions(self, out: torch.Tensor, prompt_length: int, config: GenerationConfig) -> list[str]:
        """Generated ids (N, T + new) -> completion texts: up to EOS and before any stop string."""
        start = 1 if self.encoder_decoder else prompt_length
        texts = []
        for row in out[:, start:].tolist():
            text = self.tokenizer.decode(cut_at_eos(row, config.eos_token_ids), skip_special_tokens=True)
            texts.append(cut_at_stop(text, config.stop))
        return texts

    # ---- generation ------------------------------------------------------------------------
    def _run(self, texts: list[str], templated: bool, config, overrides) -> list[str] | list[list[str]]:
        config = self.make_config(config, **overrides)
        ids, mask = self.encode(texts, templated)
        out = generate(self.model, ids, mask, config, tokenizer=self.tokenizer)
        flat, n = self.completions(out, ids.shape[1], config), config.num_return_sequences
        return flat if n == 1 else [flat[i:i + n] for i in range(0, len(flat), n)]

    def generate(self, prompt_or_prompts: str | list[str], config: GenerationConfig | None = None,
                 **overrides) -> str | list[str]:
        """Complete one prompt (-> str) or a batch (-> list[str]); the prompt is not repeated.
        With num_return_sequences = n > 1 each prompt gives a list of n completions."""
        single = isinstance(prompt_or_prompts, str)
        texts = self._run([prompt_or_prompts] if single else list(prompt_or_prompts), False, config, overrides)
        return texts[0] if single else texts

    def chat(self, messages: Messages | list[Messages], config: GenerationConfig | None = None,
             **overrides) -> str | list[str]:
        """The assistant's reply to a conversation [{"role": ..., "content": ...}, ...] (or to a batch
        of conversations), rendered with the tokenizer's chat template."""
        single = not messages or isinstance(messages[0], dict)
        conversations = [messages] if single else list(messages)
        texts = self._run([self.format_chat(m) for m in conversations], True, config, overrides)
        return texts[0] if single else texts

    def stream(self, prompt: str, config: GenerationConfig | None = None, **overrides) -> Iterator[str]:
        """Text deltas of the completion of one prompt, as they are generated."""
        return self._stream(prompt, False, config, overrides)

    def stream_chat(self, messages: Messages, config: GenerationConfig | None = None, **overrides) -> Iterator[str]:
        """Text deltas of the assistant's reply to a conversation."""
        return self._stream(self.format_chat(messages), True, config, overrides)

    def _stream(self, text: str, templated: bool, config, overrides) -> Iterator[str]:
        ids, mask = self.encode([text], templated)
        return stream(self.model, ids, self.tokenizer, mask, self.make_config(config, **overrides))
