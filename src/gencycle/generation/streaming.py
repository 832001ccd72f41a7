"""Streaming: text deltas as tokens arrive.

    for delta in stream(model, input_ids, tokenizer, max_new_tokens=50, stop=["\\n\\n"]):
        print(delta, end="", flush=True)

`TextStreamer` turns token ids into text deltas. It holds back text that could still become
a stop string ("Hel" while waiting to see whether "Hello" follows) and half-decoded UTF-8
characters; a stop string and everything after it are never emitted. The deltas join to the
same text as the non-streaming answer.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .config import GenerationConfig
from .decoding import decode_state, make_generator, prepare_inputs, resolve_config, sample_steps
from .stopping import find_stop, partial_stop_length


class TextStreamer:
    """Token ids in (`put`), text deltas out. `end()` flushes what was held back.

    `stopped` turns True once a stop string has appeared; `text` is everything emitted so far.
    """

    def __init__(self, tokenizer, stop: str | list[str] | tuple[str, ...] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stop = (stop,) if isinstance(stop, str) else tuple(stop)
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False

    def _decoded(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)

    def _emit(self, upto: str) -> str:
        """Emit `upto` minus what was already sent (nothing if decoding rewrote earlier text)."""
        if len(upto) <= len(self.text) or not upto.startswith(self.text):
            return ""
        delta, self.text = upto[len(self.text):], upto
        return delta

    def put(self, token_ids: int | list[int] | torch.Tensor) -> str:
        """Add token(s); return the text that is now safe to show (possibly "")."""
        if self.stopped:
            return ""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        self.ids.extend([token_ids] if isinstance(token_ids, int) else token_ids)
        text = self._decoded()
        index = find_stop(text, self.stop)
        if index is not None:
            self.stopped = True
            return self._emit(text[:index])
        safe = len(text) - partial_stop_length(text, self.stop)
        if text.endswith("\ufffd"):      # a multi-byte character still arriving
            safe = min(safe, len(text) - 1)
        return self._emit(text[:safe])

    def end(self) -> str:
        """Generation is over: emit what was held back (it can no longer become a stop string)."""
        if self.stopped:
            return ""
        self.stopped = True
        return self._emit(self._decoded())


def stream(model, input_ids, tokenizer, attention_mask=None, config: GenerationConfig | None = None,
           **overrides) -> Iterator[str]:
    """Text deltas of one prompt's completion, input_ids (T,) or (1, T). Checks the arguments now,
    generates as the iterator is consumed. Greedy or sampling, not beam search (whose best
    sequence is known only at the end)."""
    config = resolve_config(model, config, **overrides)
    ids, mask, config = prepare_inputs(model, input_ids, attention_mask, config)
    if ids.shape[0] != 1 or config.num_beams != 1 or config.num_return_sequences != 1:
        raise ValueError("streaming generates one sequence for one prompt: use a batch of 1, num_beams=1 "
                         "and num_return_sequences=1")
    return _deltas(model, ids, mask, tokenizer, config)


@torch.inference_mode()
def _deltas(model, ids, mask, tokenizer, config: GenerationConfig) -> Iterator[str]:
    streamer = TextStreamer(tokenizer, config.stop)
    eos = set(config.eos_token_ids)
    steps = sample_steps(decode_state(model, ids, mask, config.max_new_tokens), config,
                         make_generator(config, ids.device))
    try:
        for _, tokens in steps:
            token = int(tokens[0])
            if token in eos:
                break
            delta = streamer.put(token)
            if delta:
                yield delta
            if streamer.stopped:
                return
    finally:
        steps.close()
    tail = streamer.end()
    if tail:
        yield tail
