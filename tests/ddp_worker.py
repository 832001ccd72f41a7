"""Tiny models, a character tokenizer and a fixed task for the training tests.

Run under torchrun by tests/test_training_ddp.py:
    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_FILE [--strategy ddp|fsdp]
it trains the tiny decoder for a few steps and rank 0 saves the final weights.
"""

from __future__ import annotations

import random
import sys

import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models

from gencycle import ModelConfig, Transformer
from gencycle.checkpoints import t5
from gencycle.tokenizer import Tokenizer
from gencycle.training import Pair

LETTERS = "abcdefghij"
SPECIALS = ["<pad>", "</s>", "<s>"]  # ids 0, 1, 2 (T5's pad = decoder start, eos)


def char_tokenizer() -> Tokenizer:
    """One token per character of LETTERS + " ><=", no merges."""
    vocab = {t: i for i, t in enumerate(SPECIALS + list(LETTERS + " ><="))}
    backend = Backend(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()  # ids -> the characters, joined
    return Tokenizer(backend, {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>"})


def reverse_task(n: int, seed: int, length: int = 4) -> list[Pair]:
    """'abcd>' -> 'dcba': each completion token needs attention back into the prompt."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        word = "".join(rng.choice(LETTERS) for _ in range(length))
        pairs.append(Pair(word + ">", word[::-1]))
    return pairs


def sort_task(n: int, seed: int, marker: bool = False) -> list[dict]:
    """'dagc>' -> 'acdg': 4 distinct letters sorted (cross-attention finds them by content).

    marker=True starts each prompt with '<' (sort ascending) or '=' (descending), half and half:
    a model trained on that mix learns what the marker asks, and a soft prompt can stand in for it.
    """
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        letters = rng.sample(LETTERS, 4)
        ascending = not marker or rng.random() < 0.5
        prefix = ("<" if ascending else "=") if marker else ""
        records.append({"prompt": prefix + "".join(letters) + ">",
                        "completion": "".join(sorted(letters, reverse=not ascending))})
    return records


def tiny_decoder(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(**{**dict(
        family="llama", vocab_size=18, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, max_position_embeddings=64, position="rope", norm="rmsnorm", activation="silu",
        gated_mlp=True, norm_bias=False, tie_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        **overrides})
    return Transformer(config)


def tiny_t5(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = t5.config_from_hf(dict(vocab_size=18, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                    relative_attention_num_buckets=8, relative_attention_max_distance=16))
    return Transformer(config)


def main(argv: list[str]) -> None:
    from gencycle.training import TrainConfig, Trainer, collator_for, tokenize
    from gencycle.training.distributed import teardown
    out, strategy = argv[0], argv[2] if len(argv) > 2 and argv[1] == "--strategy" else "ddp"
    data = tokenize(reverse_task(64, seed=1), char_tokenizer(), max_length=32)
    config = TrainConfig(max_steps=4, batch_size=4, grad_accum=2, lr=3e-3, seed=0, progress=False,
                         strategy=strategy, max_grad_norm=1.0, checkpoint_every=2, out_dir=out + ".run")
    runs = []
    for resume in (False, out + ".run/checkpoints/step-00000002"):  # straight, then again from step 2
        model = tiny_decoder()
        trainer = Trainer(model, config, data, collate_fn=collator_for(model.config))
        trainer.train(resume=resume)
        runs.append(({k: v.detach().cpu() for k, v in _full_state(trainer).items()},
                     [h["loss"] for h in trainer.history]))
    if trainer.dist.is_main:
        torch.save({"state": runs[0][0], "losses": runs[0][1], "resumed_state": runs[1][0],
                    "resumed_losses": runs[1][1]}, out)
    teardown()


def _full_state(trainer) -> dict:
    if trainer.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return trainer.module.state_dict()


if __name__ == "__main__":
    main(sys.argv[1:])
