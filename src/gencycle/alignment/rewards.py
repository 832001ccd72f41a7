"""Rewards for PPO, all of one shape: `reward(prompts, completions) -> list[float]`, one per completion.

    reward = make_reward("profanity")                  # alt-profanity-check: 1 - P(offensive)
    reward = make_reward("runs/rm", label="nontoxic")  # a trained reward model folder: that label's raw logit
    reward = make_reward("my_rewards:brevity")         # any callable fn(prompts, completions), by module
    reward = make_reward("rewards.py:brevity")         # ... or by file
    reward = ClassifierReward(model, tokenizer, label=0, kind="logit")   # a SequenceClassifier in memory

Rewards read text. A reward model has its own tokenizer: the policy's tokens are decoded to text
and re-encoded with it, never passed across vocabularies. Every reward's output is checked: one
finite number per completion, or a UserError (a ValueError) naming the reward.

`alt-profanity-check` (PyPI, MIT) is a TF-IDF + linear SVM offensive-language classifier trained
on human-labelled data (the Davidson et al. hate-speech tweets and the Jigsaw toxic comments); it
is not a transformer and it knows words, not meaning. It is what `"profanity"` means here.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import torch
import torch.nn.functional as F

from gencycle.data.toxicity import offensive_probability  # alt-profanity-check's P(offensive)
from gencycle.errors import UserError

RewardKind = Literal["logit", "prob", "logprob"]
RewardOn = Literal["completion", "prompt+completion"]
PROFANITY_NAMES = ("profanity", "alt-profanity-check")


def check_scores(scores, count: int, name: str) -> list[float]:
    """`scores` as a list of `count` finite floats; a UserError naming `name` otherwise."""
    if torch.is_tensor(scores):
        scores = scores.detach().float().flatten().tolist()
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise UserError(f"reward {name} must return a list of numbers, got {type(scores).__name__}") from None
    if len(scores) != count:
        raise UserError(f"reward {name} returned {len(scores)} values for {count} completions "
                         "(it must return one number per completion)")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise UserError(f"reward {name} returned non-finite values (NaN or inf) for completions {bad[:10]}")
    return scores


def texts_to_score(prompts: Sequence[str], completions: Sequence[str], on: str) -> list[str]:
    """What a text classifier reads: the completion alone, or the prompt followed by it."""
    if on not in get_args(RewardOn):
        raise UserError(f"unknown reward_on {on!r}; use one of {', '.join(get_args(RewardOn))}")
    if on == "completion":
        return list(completions)
    return [f"{p} {c}" if p and c else p or c for p, c in zip(prompts, completions)]


# --- alt-profanity-check ----------------------------------------------------------------------

class ProfanityReward:
    """1 - P(offensive) by alt-profanity-check: higher is less offensive (in [0, 1])."""

    name = "alt-profanity-check (1 - P(offensive))"

    def __init__(self, on: RewardOn = "completion"):
        texts_to_score([], [], on)
        self.on = on

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [1.0 - p for p in offensive_probability(texts_to_score(prompts, completions, self.on))]


# --- a trained reward model ---------------------------------------------------------------------

class ClassifierReward:
    """A reward model (a sequence classifier) as a reward: one label's logit, probability or log-probability.

    model: a `gencycle.alignment.reward_model.RewardModel` (classifier + its tokenizer), or a
    `SequenceClassifier` with `tokenizer=` (the reward model's own: texts are re-encoded with it).
    label: an index or a name (the course lab's raw "nothate" logit); a one-label model needs none.
    kind: "logit" (raw, smoother for PPO), "prob" (softmax; sigmoid for one label) or "logprob".
    """

    def __init__(self, model, tokenizer=None, label: int | str | None = None, kind: RewardKind = "logit", *,
                 on: RewardOn = "completion", batch_size: int = 16, max_length: int | None = None,
                 name: str = "reward model", label_option: str = "reward-label"):
        from gencycle.alignment.reward_model import RewardModel
        if kind not in get_args(RewardKind):
            raise UserError(f"unknown reward kind {kind!r}; use one of {', '.join(get_args(RewardKind))}")
        texts_to_score([], [], on)
        if batch_size <= 0:
            raise UserError(f"the reward batch size must be positive, got {batch_size}")
        if not isinstance(model, RewardModel):
            if tokenizer is None:
                raise UserError("a reward model needs its own tokenizer: it reads text, and the policy's token ids "
                                "mean nothing in another vocabulary")
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)
            if vocab is not None and len(tokenizer) > vocab:
                raise UserError(f"the reward model's tokenizer has {len(tokenizer):,} ids but its embedding holds "
                                f"{vocab:,}: this is not the reward model's tokenizer. Pass its own (the policy's "
                                "text is decoded and re-encoded with it; ids never cross vocabularies)")
            model = RewardModel(model, tokenizer, max_length=max_length, batch_size=batch_size)
        try:
            self.index = model.label_index(label)
        except UserError as error:
            raise UserError(f"{error} (--{label_option}: an index or a name)") from None
        self.reward_model, self.kind, self.on = model, kind, on
        self.name = f"{name} (label {model.labels[self.index]!r}, {kind})"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        logits = self.reward_model.score(texts_to_score(prompts, completions, self.on))  # (N, num_labels)
        if self.kind == "logit":
            scores = logits[:, self.index]
        elif logits.shape[1] == 1:  # one label: a logistic score
            scores = torch.sigmoid(logits[:, 0]) if self.kind == "prob" else F.logsigmoid(logits[:, 0])
        else:
            logp = torch.log_softmax(logits, -1)[:, self.index]
            scores = logp.exp() if self.kind == "prob" else logp
        return scores.tolist()


# --- any Python callable ------------------------------------------------------------------------

class CallableReward:
    """fn(prompts, completions) -> one number per completion, checked on every call."""

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise UserError(f"a reward must be callable as fn(prompts, completions), got {type(fn).__name__}")
        self.fn, self.name = fn, name or getattr(fn, "__qualname__", repr(fn))

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return check_scores(self.fn(list(prompts), list(completions)), len(completions), self.name)


def load_callable(spec: str) -> Callable:
    """"module:function" or "path/to/file.py:function" -> the function (nested names: "module:Class.method")."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise UserError(f"reward {spec!r}: name a function as module:function or path.py:function")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UserError(f"reward {spec!r}: no file {where}")
        module_name = f"gencycle_reward_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        except Exception as error:  # the user's file: any error while importing it
            sys.modules.pop(module_name, None)
            raise UserError(f"reward {spec!r}: importing {where} failed: {type(error).__name__}: {error}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:
            raise UserError(f"reward {spec!r}: cannot import module {where!r}: "
                             f"{type(error).__name__}: {error}") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserError(f"reward {spec!r}: {where} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"reward {spec!r}: {attr!r} is a {type(target).__name__}, not a function")
    return target


# --- one entry point ------------------------------------------------------------------------------

def make_reward(spec, *, tokenizer=None, label: int | str | None = None, kind: RewardKind = "logit",
                on: RewardOn = "completion", batch_size: int = 16, device=None):
    """A reward from what the user names:

    "profanity" / "alt-profanity-check"   1 - P(offensive) by alt-profanity-check
    a folder                              a trained reward model (sequence-classification folder)
    "module:function", "file.py:function" any callable fn(prompts, completions) -> list[float]
    a SequenceClassifier (with tokenizer=) a reward model already in memory
    a callable                            used as it is (its output checked)
    """
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if text in PROFANITY_NAMES:
            return ProfanityReward(on)
        if Path(text).is_dir():
            return load_reward_model_reward(text, label=label, kind=kind, on=on, batch_size=batch_size,
                                            device=device)
        if ":" in text:
            return CallableReward(load_callable(text), name=text)
        raise UserError(f"unknown reward {text!r}: use 'profanity' (alt-profanity-check), a reward model folder, "
                         "module:function or path.py:function")
    from gencycle.alignment.reward_model import RewardModel
    if isinstance(spec, (torch.nn.Module, RewardModel)):
        return ClassifierReward(spec, tokenizer, label, kind, on=on, batch_size=batch_size)
    if isinstance(spec, (ProfanityReward, ClassifierReward, CallableReward)):
        return spec
    return CallableReward(spec)


def load_reward_model_reward(folder: str | Path, *, label=None, kind: RewardKind = "logit",
                             on: RewardOn = "completion", batch_size: int = 16, device=None,
                             label_option: str = "reward-label") -> ClassifierReward:
    """A reward model folder (a sequence-classification folder with its tokenizer) as a reward."""
    from gencycle.alignment.reward_model import load_reward_model
    model = load_reward_model(folder, device=device, batch_size=batch_size)
    return ClassifierReward(model, label=label, kind=kind, on=on, name=f"reward model {folder}",
                            label_option=label_option)


class OffensiveProbability:
    """A judge: P(offensive) of each completion by alt-profanity-check (higher is more offensive)."""

    name = "alt-profanity-check P(offensive)"

    def __init__(self, on: RewardOn = "completion"):
        texts_to_score([], [], on)
        self.on = on

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return offensive_probability(texts_to_score(prompts, completions, self.on))


def make_judge(spec, *, tokenizer=None, label: int | str | None = None, on: RewardOn = "completion",
               batch_size: int = 16, device=None):
    """A scorer of an unwanted property of completions, in [0, 1] (toxicity), for measuring a policy:

    "profanity" / "alt-profanity-check"   P(offensive) by alt-profanity-check
    a reward model folder / a SequenceClassifier (tokenizer=)   the softmax probability of `label`
                                          (e.g. "toxic"; a one-label model: its sigmoid)
    "module:function", "file.py:function", a callable   its values as they are
    """
    if isinstance(spec, (str, Path)) and str(spec) in PROFANITY_NAMES:
        return OffensiveProbability(on)
    from gencycle.alignment.reward_model import RewardModel
    if isinstance(spec, (str, Path)) and Path(spec).is_dir() or isinstance(spec, (torch.nn.Module, RewardModel)):
        if not isinstance(spec, (str, Path)):
            judge = ClassifierReward(spec, tokenizer, label, "prob", on=on, batch_size=batch_size, name="classifier",
                                     label_option="judge-label")
        else:
            judge = load_reward_model_reward(spec, label=label, kind="prob", on=on, batch_size=batch_size,
                                             device=device, label_option="judge-label")
        judge.name = judge.name.replace("reward model", "classifier")
        return judge
    return make_reward(spec, on=on)

