"""Build the shipped dialogue-summarization set (DialogSum format) from chitchat-dataset.

Step 1 (`select`): pick real dialogues, trim them to a readable length and write
`dialogues.jsonl` (id, dialogue, conv_id). Step 2 is human work: reference summaries
and topics are written for this project into `summaries*.jsonl` (id, summary, topic).
Step 3 (`split`): join the two and write train / validation / test JSONL files.

    python scripts/build_chitchat_dialogsum.py select
    python scripts/build_chitchat_dialogsum.py split
"""

import importlib.util
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "gencycle" / "data" / "chitchat-dialogsum"  # package data
N_DIALOGUES = 330
SPLITS = {"train": 220, "validation": 55, "test": 55}
MAX_CHARS = 900
MIN_TURNS = 6
SEED = 1234


def _turns(conversation):
    """Merge each run of messages by one sender into one turn; label speakers #Person1#/#Person2#."""
    speakers, turns = {}, []
    for run in conversation["messages"]:
        sender = run[0]["sender"]
        speakers.setdefault(sender, f"#Person{len(speakers) + 1}#")
        text = " ".join(m["text"].strip() for m in run if m["text"].strip())
        if text:
            turns.append(f"{speakers[sender]}: {text}")
    return turns


def _trim(turns):
    kept, size = [], 0
    for turn in turns:
        if size + len(turn) > MAX_CHARS and len(kept) >= MIN_TURNS:
            break
        kept.append(turn)
        size += len(turn) + 1
    return kept


def select():
    root = Path(importlib.util.find_spec("chitchat_dataset").submodule_search_locations[0])
    data = json.loads((root / "dataset.json").read_text())
    rng = random.Random(SEED)
    ids = sorted(data)
    rng.shuffle(ids)
    rows = []
    for conv_id in ids:
        turns = _trim(_turns(data[conv_id]))
        text = "\n".join(turns)
        if len(turns) < MIN_TURNS or len(text) > MAX_CHARS + 300 or len(text) < 350:
            continue
        rows.append({"id": f"chitchat_{len(rows) + 1:03d}", "dialogue": text, "conv_id": conv_id})
        if len(rows) == N_DIALOGUES:
            break
    with open(OUT / "dialogues.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} dialogues to {OUT / 'dialogues.jsonl'}")


def split():
    dialogues = [json.loads(line) for line in open(OUT / "dialogues.jsonl")]
    notes = {}
    for path in sorted(OUT.glob("summaries*.jsonl")):
        for line in open(path):
            if line.strip():
                row = json.loads(line)
                notes[row["id"]] = row
    missing = [d["id"] for d in dialogues if d["id"] not in notes]
    if missing:
        sys.exit(f"{len(missing)} dialogues have no summary yet, e.g. {missing[:5]}")
    rows = [{"id": d["id"], "dialogue": d["dialogue"], "summary": notes[d["id"]]["summary"],
             "topic": notes[d["id"]]["topic"]} for d in dialogues]
    start = 0
    for name, count in SPLITS.items():
        with open(OUT / f"{name}.jsonl", "w") as f:
            for row in rows[start:start + count]:
                f.write(json.dumps(row) + "\n")
        start += count
    print("wrote", {name: count for name, count in SPLITS.items()})


if __name__ == "__main__":
    {"select": select, "split": split}[sys.argv[1]]()
