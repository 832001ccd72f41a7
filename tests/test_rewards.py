"""Pluggable rewards: alt-profanity-check, a trained reward model (its own tokenizer: text is re-encoded),
any callable named as module:function or path.py:function; every bad input's message."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from ddp_worker import char_tokenizer
from gencycle import ModelConfig, Transformer
from gencycle.alignment.reward_model import RewardModel
from gencycle.alignment.rewards import (
    CallableReward, ClassifierReward, OffensiveProbability, ProfanityReward, check_scores, load_callable, make_judge,
    make_reward, texts_to_score,
)
from gencycle.errors import UserError
from gencycle.model.heads import SequenceClassifier
from tiny_llm import save_tiny_chat_model

pytestmark = pytest.mark.usefixtures("one_thread")

CLEAN, RUDE = "thank you, that was a lovely dinner", "shut up you stupid idiot"


def test_profanity_reward_is_one_minus_alt_profanity_checks_probability():
    from profanity_check import predict_prob
    reward = make_reward("profanity")
    assert isinstance(reward, ProfanityReward) and "alt-profanity-check" in reward.name
    scores = reward(["p1", "p2"], [CLEAN, RUDE])
    expected = 1 - predict_prob([CLEAN, RUDE])
    assert scores == pytest.approx(expected.tolist(), abs=1e-12)
    assert scores[0] > 0.8 > 0.2 > scores[1]  # the classifier knows these words
    judge = make_judge("alt-profanity-check")
    assert isinstance(judge, OffensiveProbability) and judge([""] * 2, [CLEAN, RUDE]) == \
        pytest.approx((1 - expected).tolist())
    # prompt + completion: the course lab scored the query and the response together
    both = ProfanityReward(on="prompt+completion")(["you idiot"], ["fine"])
    assert both[0] == pytest.approx(1 - predict_prob(["you idiot fine"])[0])


def test_texts_to_score():
    assert texts_to_score(["a", ""], ["b", "c"], "completion") == ["b", "c"]
    assert texts_to_score(["a", ""], ["b", "c"], "prompt+completion") == ["a b", "c"]
    with pytest.raises(UserError, match="unknown reward_on 'both'; use one of completion, prompt"):
        texts_to_score([], [], "both")


# ------------------------------------------------------------------ callables
REWARDS_FILE = """
def length(prompts, completions):
    return [float(len(c)) for c in completions]

def too_few(prompts, completions):
    return [1.0]

def not_numbers(prompts, completions):
    return ["high"] * len(completions)

def nan(prompts, completions):
    return [float("nan")] * len(completions)

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS_FILE)
    return path


def test_callables_by_module_and_by_file(rewards_file, monkeypatch):
    by_file = make_reward(f"{rewards_file}:length")
    assert isinstance(by_file, CallableReward) and by_file(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
    monkeypatch.syspath_prepend(str(rewards_file.parent))
    by_module = make_reward("my_rewards:length")
    assert by_module(["p"], ["abc"]) == [3.0]
    assert make_reward(lambda p, c: [0.5] * len(c))(["x"], ["y"]) == [0.5]
    sys.modules.pop("my_rewards", None)


def test_bad_callables_are_named(rewards_file, tmp_path):
    with pytest.raises(UserError, match=r"cannot import module 'no_such_module_xyz': ModuleNotFoundError"):
        make_reward("no_such_module_xyz:fn")
    with pytest.raises(UserError, match=rf"reward '{rewards_file}:missing': .* has no attribute 'missing'"):
        make_reward(f"{rewards_file}:missing")
    with pytest.raises(UserError, match=r"no file .*nowhere\.py"):
        make_reward(f"{tmp_path}/nowhere.py:length")
    with pytest.raises(UserError, match="'NOT_A_FUNCTION' is a int, not a function"):
        make_reward(f"{rewards_file}:NOT_A_FUNCTION")
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(UserError, match="importing .*broken.py failed: SyntaxError"):
        make_reward(f"{broken}:f")
    with pytest.raises(UserError, match="name a function as module:function or path.py:function"):
        load_callable("justaname:")
    with pytest.raises(UserError, match="unknown reward 'nonsense': use 'profanity'"):
        make_reward("nonsense")


def test_a_callable_returning_the_wrong_number_of_values_is_named(rewards_file):
    with pytest.raises(UserError, match=r"reward .*too_few returned 1 values for 3 completions \(it must return one "
                                        r"number per completion\)"):
        make_reward(f"{rewards_file}:too_few")(["a"] * 3, ["b"] * 3)
    with pytest.raises(UserError, match="must return a list of numbers"):
        make_reward(f"{rewards_file}:not_numbers")(["a"], ["b"])
    with pytest.raises(UserError, match=r"non-finite values \(NaN or inf\) for completions \[0, 1\]"):
        make_reward(f"{rewards_file}:nan")(["a"] * 2, ["b"] * 2)
    assert check_scores(torch.tensor([1.0, 2.0]), 2, "t") == [1.0, 2.0]


# ------------------------------------------------------------------ reward models
@pytest.fixture(scope="module")
def reward_folder(tmp_path_factory):
    """A tiny two-label classifier (labels non-toxic / toxic) with its own BPE tokenizer (~400 ids),
    saved as a reward model folder."""
    from gencycle import load_tokenizer
    chat = save_tiny_chat_model(tmp_path_factory.mktemp("tokenizer"))
    tokenizer = load_tokenizer(chat)
    torch.manual_seed(0)
    backbone = Transformer(ModelConfig(family="llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2,
                                       num_heads=4, num_kv_heads=2, intermediate_size=64, max_position_embeddings=128,
                                       position="rope", norm="rmsnorm", activation="silu", gated_mlp=True,
                                       norm_bias=False, tie_embeddings=True, pad_token_id=tokenizer.pad_token_id))
    classifier = SequenceClassifier(backbone, 2).eval()
    model = RewardModel(classifier, tokenizer, {0: "non-toxic", 1: "toxic"})
    return model.save(tmp_path_factory.mktemp("rm") / "model"), classifier, tokenizer


def direct_logits(classifier, tokenizer, texts):
    with torch.no_grad():
        return torch.stack([classifier(torch.tensor([tokenizer.encode(t)])).logits[0] for t in texts])


def test_a_reward_model_folder_reads_text_with_its_own_tokenizer(reward_folder):
    folder, classifier, tokenizer = reward_folder
    policy_tokenizer = char_tokenizer()  # another vocabulary (17 ids): the policy's
    completions = [policy_tokenizer.decode(policy_tokenizer.encode(t, add_special_tokens=False))
                   for t in ("abc de", "jihgf", "a")]  # what PPO scores: the policy's tokens decoded to text
    logits = direct_logits(classifier, tokenizer, completions)  # re-encoded with the reward model's tokenizer
    reward = make_reward(folder, label="non-toxic")
    assert isinstance(reward, ClassifierReward) and "'non-toxic', logit" in reward.name
    assert reward(["p"] * 3, completions) == pytest.approx(logits[:, 0].tolist(), abs=1e-4)
    assert make_reward(folder, label=1, kind="prob")(["p"] * 3, completions) == \
        pytest.approx(logits.softmax(-1)[:, 1].tolist(), abs=1e-5)
    assert make_reward(folder, label="toxic", kind="logprob")(["p"] * 3, completions) == \
        pytest.approx(logits.log_softmax(-1)[:, 1].tolist(), abs=1e-5)
    judge = make_judge(folder, label="toxic")
    assert judge(["p"] * 3, completions) == pytest.approx(logits.softmax(-1)[:, 1].tolist(), abs=1e-5)
    # the policy's ids fed as they are would be other tokens: the scores differ
    ids = torch.tensor([policy_tokenizer.encode("abc de", add_special_tokens=False)])
    with torch.no_grad():
        wrong = classifier(ids).logits[0, 0].item()
    assert abs(wrong - logits[0, 0].item()) > 1e-4


def test_an_in_memory_classifier_needs_its_own_tokenizer(reward_folder):
    _, classifier, tokenizer = reward_folder
    reward = make_reward(classifier, tokenizer=tokenizer, label=0)
    assert reward(["p"], ["hello there"]) == pytest.approx(direct_logits(classifier, tokenizer, ["hello there"])[:, 0]
                                                          .tolist(), abs=1e-4)
    with pytest.raises(UserError, match="a reward model needs its own tokenizer: it reads text"):
        make_reward(classifier, label=0)
    small = SequenceClassifier(Transformer(ModelConfig(family="llama", vocab_size=18, hidden_size=16, num_layers=1,
                                                       num_heads=2, intermediate_size=32, position="rope",
                                                       norm="rmsnorm", max_position_embeddings=32)), 1)
    with pytest.raises(UserError, match=r"tokenizer has \d+ ids but its embedding holds 18: this is not the reward "
                                        r"model's tokenizer.*ids never cross vocabularies"):
        ClassifierReward(small, tokenizer)


def test_reward_labels_are_checked(reward_folder, tmp_path):
    folder, _, _ = reward_folder
    with pytest.raises(UserError, match=r"2 labels \(non-toxic, toxic\): say which one is the reward.*--reward-label"):
        make_reward(folder)
    with pytest.raises(UserError, match=r"unknown label 'nothate'.*non-toxic, toxic.*--reward-label"):
        make_reward(folder, label="nothate")
    with pytest.raises(UserError, match="label index 5 is out of range for a model with 2 labels"):
        make_reward(folder, label="5")
    with pytest.raises(UserError, match="--judge-label"):
        make_judge(folder)
    with pytest.raises(UserError, match="unknown reward kind 'raw'"):
        make_reward(folder, label=0, kind="raw")


def test_a_reward_model_folder_without_a_head_or_tokenizer_is_refused(reward_folder, tmp_path):
    import shutil
    folder, _, _ = reward_folder
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(folder, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match="no tokenizer files"):
        make_reward(bare, label=0)
    lm = tmp_path / "lm"
    save_tiny_chat_model(lm)  # a causal LM folder: no classification head
    with pytest.raises(ValueError, match="classification head"):
        make_reward(lm, label=0)


def test_one_label_reward_model_kinds(reward_folder, tmp_path):
    _, _, tokenizer = reward_folder
    torch.manual_seed(1)
    backbone = Transformer(ModelConfig(family="llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=1,
                                       num_heads=2, intermediate_size=32, position="rope", norm="rmsnorm",
                                       max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id))
    scalar = SequenceClassifier(backbone, 1).eval()
    logit = make_reward(scalar, tokenizer=tokenizer)(["p"], ["nice"])[0]
    prob = make_reward(scalar, tokenizer=tokenizer, kind="prob")(["p"], ["nice"])[0]
    assert prob == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)
