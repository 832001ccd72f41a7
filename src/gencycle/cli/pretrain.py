"""`gencycle pretrain --arch decoder|encoder|encoder-decoder --config PRESET_OR_JSON --tokenizer DIR
--data FILES_OR_NAME --out DIR`

Every option but --data and --tokenizer is generated from `gencycle.workflows.PretrainConfig` (and
the configs it holds) by `cli.options`, so the command and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse

from .options import add_config_arguments, config_from_args

DESCRIPTION = """\
Pretrain a transformer from scratch: a decoder on next-token prediction (GPT), an encoder on
masked tokens (BERT) or an encoder-decoder on span corruption (T5). --data is a named corpus
(austen: Jane Austen's novels, from Debian's r-cran-janeaustenr; chitchat: the chitchat-dataset
conversations) or text files / folders. --tokenizer is a tokenizer folder; one that holds none
gets a tokenizer trained on the training split first (--tokenizer-kind, --tokenizer-vocab-size).
The documents are packed into blocks of --block-size tokens; a share is held out for the
validation loss (every --eval-every steps). Decoders print samples every --sample-every steps.
The run folder (--out) gets checkpoints (--resume continues exactly), metrics.jsonl,
loss_curve.png, report.json and model/, a Hugging Face model folder with the tokenizer.

On several processes or machines the same command runs data-parallel under torchrun:
  torchrun --nproc-per-node 8 --no-python gencycle pretrain ... [--strategy fsdp]
"""


def register(subparsers) -> None:
    from ..workflows.pretrain import PretrainConfig
    parser = subparsers.add_parser("pretrain", help="pretrain a decoder, encoder or encoder-decoder from scratch",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, nargs="+", metavar="FILES_OR_NAME",
                        help="a corpus name (austen, chitchat) or text files (.txt, .md, .jsonl) and folders")
    parser.add_argument("--tokenizer", required=True, metavar="DIR",
                        help="tokenizer folder (tokenizer.json); trained on the corpus there when it has none")
    add_config_arguments(parser, PretrainConfig())
    parser.set_defaults(func=run)


def run(args) -> None:
    from ..workflows.pretrain import PretrainConfig, pretrain
    data = args.data[0] if len(args.data) == 1 else args.data
    result = pretrain(data, args.tokenizer, config_from_args(PretrainConfig(), args))
    if not result.main_process:  # the main process of a torchrun job reports
        return
    print(result.summary())
    if result.out_dir is not None:
        print(f"wrote {result.out_dir}")
