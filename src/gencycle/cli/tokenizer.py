"""`gencycle tokenizer train FILES... --kind bpe|wordpiece|unigram --vocab-size N --out DIR`"""

from __future__ import annotations

import argparse

from .options import number

DESCRIPTION = """\
Train a tokenizer on the UTF-8 text of FILES (a .jsonl file gives the string values of its
records): byte-level BPE like GPT-2, WordPiece like BERT, or Unigram like T5 (with T5's
<extra_id_N> sentinels last). --vocab-size counts every id, special tokens included. --out gets
tokenizer.json + tokenizer_config.json, which transformers' AutoTokenizer and gencycle load
with the same ids.
"""


def register(subparsers) -> None:
    from ..training.tokenizer_training import KINDS
    group = subparsers.add_parser("tokenizer", help="train a tokenizer (BPE, WordPiece, Unigram)")
    commands = group.add_subparsers(dest="tokenizer_command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on text files", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("files", nargs="+", help="corpus files: UTF-8 text, or .jsonl records")
    train.add_argument("--kind", choices=KINDS, default="bpe",
                       help="bpe (GPT-2, byte-level), wordpiece (BERT) or unigram (T5) (default: bpe)")
    train.add_argument("--vocab-size", type=number(int, minimum=1), required=True,
                       help="ids in all, special tokens included")
    train.add_argument("--out", required=True, help="folder to write the tokenizer to")
    train.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                       help="wordpiece: lowercase and strip accents, BERT uncased (default: on)")
    train.add_argument("--extra-ids", type=number(int, minimum=0), default=100,
                       help="unigram: T5's sentinel tokens <extra_id_N>, >= 0 (0: none) (default: 100)")
    train.add_argument("--min-frequency", type=number(int, minimum=1), default=2,
                       help="bpe / wordpiece: learn no merge seen fewer times, >= 1 (default: 2)")
    train.add_argument("--model-max-length", type=number(int, minimum=1),
                       help="context length the config states, >= 1 (default: 1024 for bpe, 512 otherwise)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="show the trainer's progress bar (default: on)")
    train.set_defaults(func=run_train)


def run_train(args) -> None:
    from ..errors import check_output
    from ..training.tokenizer_training import train_tokenizer
    check_output(args.out, "out")  # an existing file is refused before training
    tokenizer = train_tokenizer(args.files, args.kind, args.vocab_size, args.out, lowercase=args.lowercase,
                                extra_ids=args.extra_ids, min_frequency=args.min_frequency,
                                model_max_length=args.model_max_length, show_progress=args.progress)
    print(f"wrote a {args.kind} tokenizer of {tokenizer.vocab_size} ids to {args.out}")
