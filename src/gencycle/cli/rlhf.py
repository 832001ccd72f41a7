"""`gencycle rlhf MODEL --prompts FILE --reward SPEC ...`: PPO with a KL penalty.

Every option but MODEL, --prompts and --reward is generated from
`gencycle.workflows.rlhf.RlhfConfig` (and the configs it holds) by `cli.options`.
"""

from __future__ import annotations

import argparse

from .options import add_config_arguments, config_from_args

DESCRIPTION = """\
Align MODEL with PPO against a frozen reference (the model with its LoRA adapters off, or a frozen
copy with --method full): sample a reply to each prompt, score it with --reward, and train on the
score minus kl_coef x the KL to the reference.

--prompts: a .jsonl / .csv file (a `prompt` field, or `messages` with --chat-template), a folder
with train.jsonl (and test.jsonl, the held-out prompts), or `detox` (real chat contexts before an
offensive reply; held out: detox:test).
--reward: `profanity` (alt-profanity-check, a TF-IDF + linear SVM offensive-language classifier:
1 - P(offensive)), a reward model folder (--reward-label picks the label, --reward-kind logit /
prob / logprob), or a Python function fn(prompts, completions) -> list of floats named as
module:function or path.py:function.

The run folder (--out) gets metrics.jsonl (reward, KL, ratio, entropy, ... per step),
samples.jsonl, reward_kl.png, checkpoints, report.json with the held-out before / after table
(--judges, bootstrap 95% intervals), eval_samples.jsonl, the adapter (PEFT folder) or model, and
value_head.safetensors.

The detoxification lab:
  gencycle rlhf smollm2-135m-instruct --prompts detox --chat-template --reward RM_FOLDER \\
      --reward-label non-toxic --judges profanity RM_FOLDER --judge-label toxic --out runs/detox
"""


def register(subparsers) -> None:
    from ..workflows.rlhf import RlhfConfig
    parser = subparsers.add_parser("rlhf", help="PPO with a KL penalty: align a model to a reward",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder, .gguf file or packaged model name")
    parser.add_argument("--prompts", required=True, help="prompts file, folder with train.jsonl, or 'detox'")
    parser.add_argument("--reward", required=True,
                        help="profanity | reward model folder | module:function | path.py:function")
    add_config_arguments(parser, RlhfConfig())
    parser.set_defaults(func=run)


def run(args) -> None:
    from ..workflows.rlhf import RlhfConfig, rlhf
    result = rlhf(args.model, args.prompts, args.reward, config_from_args(RlhfConfig(), args))
    print(result.summary())
    if result.out_dir is not None:
        print(f"wrote {result.out_dir}")
