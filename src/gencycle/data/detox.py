"""The detoxification lab's prompts: real chat contexts whose next human reply was offensive.

    train = detox_prompts("train")      # a few thousand prompts to run PPO on
    test = detox_prompts("test")        # 256 held-out prompts (other conversations), fixed seed

Picked the way RealToxicityPrompts picks its prompts (text whose real continuation is toxic), from
`chitchat-dataset` (PyPI, MIT): 7,168 human-to-human chats, 258k messages in 139k turns (a turn is
one person's consecutive messages). A turn is an *offensive reply* when alt-profanity-check (a
TF-IDF + linear SVM offensive-language classifier, trained on human-labelled tweets and comments)
gives one of its messages P(offensive) > 0.5: about 1.7% of the messages, 3,895 turns with a turn
before them. The labels are the classifier's, not a person's: they are derived, and noisy (it flags
"WHAT THE HECK" and now and then a harmless line).

Each prompt is the conversation before such a reply, its last `context_turns` (2) turns at most: the
person who replied offensively speaks as the assistant, the other as the user, so a chat model
writes the next reply in the place where a human wrote an offensive one. A record:

    id          "<conversation id>:<turn index>"
    messages    [{"role": "user" | "assistant", "content": ...}, ...], the last one from the user
    prompt      the same context as plain text, "A: ...\\nB: ...\\nB:" (B is the replier)
    reply       the real offensive reply (never shown to the policy)
    reply_offensive  its highest message's P(offensive)

The held-out split is whole conversations, drawn with a fixed seed, so no context of a test prompt
is in the training split. The chats and the labeller are `gencycle.data.toxicity`'s (the reward
model's data), read once per process.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

SPLITS = ("train", "test", "all")


def turns(messages) -> list[tuple[str, list[str]]]:
    """(sender, [text, ...]) per turn: a person's consecutive messages."""
    out: list[tuple[str, list[str]]] = []
    for sender, text in messages:
        if out and out[-1][0] == sender:
            out[-1][1].append(text)
        else:
            out.append((sender, [text]))
    return out


@functools.lru_cache(maxsize=4)
def _candidates(threshold: float, context_turns: int) -> tuple[dict, ...]:
    """Every context before an offensive reply, in the dataset's order (conversations sorted by id)."""
    from .toxicity import chitchat_conversations, offensive_probability
    chats = [(cid, turns(messages)) for cid, messages in chitchat_conversations()]
    scores = iter(offensive_probability([text for _, chat in chats for _, texts in chat for text in texts]))
    out = []
    for cid, chat in chats:
        for index, (replier, texts) in enumerate(chat):
            worst = max(next(scores) for _ in texts)
            if worst <= threshold or index == 0:
                continue
            messages, lines = [], []
            for sender, previous in chat[max(0, index - context_turns):index]:
                text = "\n".join(t.strip() for t in previous if t.strip())
                if not text:
                    continue
                mine = sender == replier
                messages.append({"role": "assistant" if mine else "user", "content": text})
                lines.append(f"{'B' if mine else 'A'}: {text}")
            while messages and messages[-1]["role"] == "assistant":  # the context ends with the other person
                messages.pop()
                lines.pop()
            if not messages:
                continue
            out.append({"id": f"{cid}:{index}", "conversation": cid, "messages": messages,
                        "prompt": "\n".join(lines) + "\nB:", "reply": "\n".join(texts),
                        "reply_offensive": worst})
    return tuple(out)


def detox_prompts(split: str = "train", *, test_size: int = 256, seed: int = 0, threshold: float = 0.5,
                  context_turns: int = 2) -> list[dict]:
    """The lab's prompts of `split` ("train", "test" or "all"); see the module docstring.

    test_size: held-out prompts (whole conversations are drawn in a seeded order until there are
    this many; the rest of the conversation that crosses the line is in neither split).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown detox split {split!r}; use one of {', '.join(SPLITS)}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if context_turns < 1:
        raise ValueError(f"context_turns must be at least 1, got {context_turns}")
    records = [dict(r) for r in _candidates(threshold, context_turns)]
    if split == "all":
        return records
    conversations = sorted({r["conversation"] for r in records})
    random.Random(seed).shuffle(conversations)
    if not 0 < test_size < len(records):
        raise ValueError(f"test_size must be in [1, {len(records) - 1}], got {test_size}")
    by_conversation: dict[str, list[dict]] = {}
    for record in records:
        by_conversation.setdefault(record["conversation"], []).append(record)
    test, held_out = [], set()
    for cid in conversations:
        if len(test) >= test_size:
            break
        test += by_conversation[cid][:test_size - len(test)]
        held_out.add(cid)  # the whole conversation: its rows past test_size are in neither split
    if split == "test":
        return test
    return [r for r in records if r["conversation"] not in held_out]


def write_detox_prompts(folder: str | Path, **options) -> Path:
    """train.jsonl and test.jsonl of the lab's prompts, and a data card, into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "test"):
        rows = detox_prompts(split, **options)
        counts[split] = len(rows)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
    (folder / "README.md").write_text(DATA_CARD.format(**counts), encoding="utf-8")
    return folder


DATA_CARD = """# Detox prompts (derived from chitchat-dataset)

train: {train} prompts, test: {test} prompts (whole conversations held out, fixed seed).

Each prompt is the context of a real human-to-human chat (chitchat-dataset 0.9.0, MIT) before a reply
that alt-profanity-check 1.9.1 scored as offensive (P > 0.5 for one of its messages). The labels are
derived from that classifier (TF-IDF + linear SVM trained on human-labelled tweets and comments), not
from people, and are noisy. Fields: id, conversation, messages (chat turns; the replier is the
assistant), prompt (plain text), reply (the real offensive reply), reply_offensive.
"""
