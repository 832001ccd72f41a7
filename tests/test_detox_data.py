"""The detox lab's prompts: real chitchat contexts before a reply alt-profanity-check scores as offensive;
a held-out split of whole conversations with a fixed seed."""

from __future__ import annotations

import json

import pytest

from gencycle.data.detox import detox_prompts, turns, write_detox_prompts

pytest.importorskip("chitchat_dataset")
pytest.importorskip("profanity_check")


@pytest.fixture(scope="module")
def splits():
    return {split: detox_prompts(split) for split in ("train", "test", "all")}


def test_held_out_prompts_are_whole_other_conversations(splits):
    train, test, every = splits["train"], splits["test"], splits["all"]
    assert len(test) == 256 and len(train) > 3000
    assert not {r["conversation"] for r in train} & {r["conversation"] for r in test}
    assert len({r["id"] for r in every}) == len(every)  # one prompt per reply
    assert len(train) + len(test) <= len(every)
    # a few thousand of the 139k turns: about what RealToxicityPrompts' rule gives (1.7% of messages)
    assert 3000 < len(every) < 5000


def test_the_split_is_fixed_by_its_seed(splits):
    again = detox_prompts("test")
    assert [r["id"] for r in again] == [r["id"] for r in splits["test"]]
    other = detox_prompts("test", seed=1)
    assert [r["id"] for r in other] != [r["id"] for r in splits["test"]]
    assert len(detox_prompts("test", test_size=300)) == 300


def test_each_prompt_is_the_context_before_an_offensive_reply(splits):
    from profanity_check import predict_prob
    sample = splits["test"][:40]
    for record in sample:
        assert record["reply_offensive"] > 0.5
        messages = record["messages"]
        assert messages and messages[-1]["role"] == "user" and len(messages) <= 2  # context_turns=2
        assert all(m["role"] in ("user", "assistant") and m["content"].strip() for m in messages)
        assert record["prompt"].endswith("\nB:") and record["prompt"].count("\n") >= len(messages)
    # the reply's score is alt-profanity-check's, on one of its messages
    worst = [max(predict_prob(r["reply"].split("\n"))) for r in sample]
    assert worst == pytest.approx([r["reply_offensive"] for r in sample], abs=1e-6)


def test_turns_group_a_persons_consecutive_messages():
    assert turns([("a", "hi"), ("a", "there"), ("b", "yo"), ("a", "ok")]) == \
        [("a", ["hi", "there"]), ("b", ["yo"]), ("a", ["ok"])]


def test_written_files_and_bad_arguments(tmp_path, splits):
    folder = write_detox_prompts(tmp_path / "detox")
    test = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in test] == [r["id"] for r in splits["test"]]
    assert "derived" in (folder / "README.md").read_text() and "alt-profanity-check" in (folder / "README.md").read_text()
    with pytest.raises(ValueError, match="unknown detox split 'validation'; use one of train, test, all"):
        detox_prompts("validation")
    with pytest.raises(ValueError, match=r"test_size must be in \[1, "):
        detox_prompts("test", test_size=0)
