"""`gencycle reward train BACKBONE --data FILE --out DIR` and `gencycle reward score DIR TEXT...`

`reward train`'s options are generated from `gencycle.workflows.reward.RewardConfig` (and the
configs it holds) by `cli.options`, so the command and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import json

from .options import add_config_arguments, config_from_args

TRAIN = """\
Train a reward model: a classification head on BACKBONE (a model folder, .gguf file, packaged
name such as all-minilm-l6-v2, or a reward model folder to train further). --data rows are
text/label (cross-entropy over the labels: a classifier such as toxic / non-toxic) or
prompt/chosen/rejected (Bradley-Terry on one scalar, with an optional per-row margin). --data is
a .jsonl / .csv file, a folder of train / validation / test splits, or chitchat-toxicity (chat
messages labelled by alt-profanity-check: derived labels, see gencycle/data/toxicity.py).
--out gets metrics.jsonl (loss and accuracy per step), loss_curve.png, report.json (accuracy
before / after on the eval and test splits) and model/: a Hugging Face sequence-classification
folder with its tokenizer, which transformers' AutoModelForSequenceClassification loads.
"""

SCORE = """\
Score TEXTs with a reward model folder: one row per text with its logits (and, for several
labels, their softmax probabilities). --label picks one column, as a reward reads it.
"""


def register(subparsers) -> None:
    from ..workflows.reward import RewardConfig
    group = subparsers.add_parser("reward", help="reward models: train one, score texts with one")
    commands = group.add_subparsers(dest="reward_command", required=True)
    train = commands.add_parser("train", help="train a reward model (labelled text or preference pairs)",
                                description=TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("backbone", help="model folder, .gguf file, packaged name, or a reward model folder")
    train.add_argument("--data", required=True,
                       help="a .jsonl / .csv file, a folder of train/validation/test splits, or chitchat-toxicity")
    add_config_arguments(train, RewardConfig())
    train.set_defaults(func=run_train)

    score = commands.add_parser("score", help="score texts with a reward model", description=SCORE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    score.add_argument("model", help="reward model folder (sequence-classification layout with its tokenizer)")
    score.add_argument("texts", nargs="+", help="texts to score")
    score.add_argument("--label", help="print only this label's logit (a name or an index)")
    score.add_argument("--device", help="cpu, cuda, ... (default: a GPU when there is one)")
    score.add_argument("--json", action="store_true", help="one JSON object per text instead of a table")
    score.set_defaults(func=run_score)


def run_train(args) -> None:
    from ..workflows.reward import RewardConfig, train_reward_model
    result = train_reward_model(args.backbone, args.data, config_from_args(RewardConfig(), args))
    print(result.summary())
    if result.out_dir is not None:
        print(f"wrote {result.out_dir} (the reward model: {result.out_dir / 'model'})")


def run_score(args) -> None:
    import torch
    from ..alignment.reward_model import load_reward_model
    from ..checkpoints.devices import resolve_device
    from .generate import utf8
    for number, text in enumerate(args.texts, start=1):
        utf8(text, f"text {number}")
    device = resolve_device(args.device) if args.device else None
    rm = load_reward_model(args.model, device=device)
    logits = rm.score(args.texts)
    probs = torch.softmax(logits, -1) if rm.num_labels > 1 else torch.sigmoid(logits)
    index = rm.label_index(args.label) if args.label is not None else None
    for text, row, prob in zip(args.texts, logits.tolist(), probs.tolist()):
        if index is not None:
            values = {rm.labels[index]: row[index]}
        else:
            values = dict(zip(rm.labels, row))
        if args.json:
            print(json.dumps({"text": text, "logits": values,
                              **({} if index is not None else {"probs": dict(zip(rm.labels, prob))})}))
        else:
            shown = "  ".join(f"{name} {value:+.4f}" for name, value in values.items())
            if index is None and rm.num_labels > 1:
                top = max(range(rm.num_labels), key=lambda i: prob[i])
                shown += f"  ({rm.labels[top]} {prob[top]:.3f})"
            print(f"{shown}\t{text}")
