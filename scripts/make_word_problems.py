"""Write data/word-problems/problems.jsonl: 100 synthetic arithmetic word problems, exact answers known.

    python scripts/make_word_problems.py                  # the committed file (seed 15)
    python scripts/make_word_problems.py --seed 1 --out /tmp/other.jsonl

SYNTHETIC: ten templates written for gencycle, ten problems each, with numbers, names and
objects drawn by a fixed seed. Every problem takes two or three operations (+, -, *, exact /)
and its answer is a whole number computed here, never by a model. Each record: id, question,
answer (int), template, synthetic: true. The same seed always writes the same file.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "word-problems" / "problems.jsonl"
NAMES = ["Maya", "Omar", "Lena", "Tom", "Priya", "Jonas", "Aiko", "Carlos", "Nora", "Sam", "Ines", "Yusuf"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cards", "stamps", "shells", "books"]


def buy_and_give(r: random.Random):
    name, friend = r.sample(NAMES, 2)
    item = r.choice(ITEMS)
    a, b = r.randint(10, 60), r.randint(5, 40)
    c = r.randint(2, a + b - 1)
    return (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to {friend}. "
            f"How many {item} does {name} have now?", a + b - c)


def boxes(r: random.Random):
    item = r.choice(ITEMS)
    a, b, c = r.randint(6, 24), r.randint(3, 15), r.randint(1, 20)
    return (f"A box holds {a} {item}. A shop has {b} full boxes and {c} loose {item}. "
            f"How many {item} does the shop have?", a * b + c)


def reading(r: random.Random):
    name = r.choice(NAMES)
    a, b, c = r.randint(8, 40), r.randint(3, 12), r.randint(5, 30)
    return (f"{name} reads {a} pages every day for {b} days, and then {c} pages on the last day. "
            f"How many pages does {name} read in total?", a * b + c)


def sharing(r: random.Random):
    kids, each = r.randint(3, 9), r.randint(4, 15)
    total = kids * each
    extra = r.randint(2, min(20, total - 1))
    return (f"A teacher has {total - extra} cookies and bakes {extra} more. She shares all the cookies "
            f"equally among {kids} children. How many cookies does each child get?", each)


def change(r: random.Random):
    name = r.choice(NAMES)
    price, count = r.randint(3, 25), r.randint(2, 6)
    paid = (price * count // 10 + 1 + r.randint(0, 3)) * 10
    return (f"A notebook costs {price} dollars. {name} buys {count} notebooks and pays with {paid} dollars. "
            f"How many dollars of change does {name} get?", paid - price * count)


def travel(r: random.Random):
    speed, hours, more = r.randint(40, 110), r.randint(2, 6), r.randint(10, 90)
    return (f"A train travels at {speed} kilometers per hour for {hours} hours, and then {more} kilometers "
            f"more. How many kilometers does it travel in all?", speed * hours + more)


def times_as_many(r: random.Random):
    name, friend = r.sample(NAMES, 2)
    item = r.choice(ITEMS)
    a, k = r.randint(4, 30), r.randint(2, 5)
    return (f"{name} has {a} {item}. {friend} has {k} times as many {item} as {name}. "
            f"How many {item} do they have together?", a + a * k)


def chairs(r: random.Random):
    rows, per_row = r.randint(5, 20), r.randint(6, 16)
    empty = r.randint(1, rows * per_row - 1)
    return (f"A hall has {rows} rows of {per_row} chairs. {empty} chairs are empty. "
            f"How many chairs are taken?", rows * per_row - empty)


def savings(r: random.Random):
    name = r.choice(NAMES)
    weekly, weeks = r.randint(5, 30), r.randint(4, 12)
    spent = r.randint(1, weekly * weeks - 1)
    return (f"{name} saves {weekly} dollars each week for {weeks} weeks, then spends {spent} dollars on a gift. "
            f"How many dollars does {name} have left?", weekly * weeks - spent)


def bakery(r: random.Random):
    per_box, boxes_ = r.randint(4, 12), r.randint(3, 10)
    sold = r.randint(5, 40)
    baked_more = r.randint(5, 30)
    made = per_box * boxes_ + sold - baked_more
    while made <= sold:  # keep every quantity positive
        baked_more -= 1
        made = per_box * boxes_ + sold - baked_more
    return (f"A baker makes {made} muffins and sells {sold} of them. Then she bakes {baked_more} more and packs "
            f"all the muffins she has into boxes of {per_box}. How many boxes does she fill?", boxes_)


TEMPLATES = [buy_and_give, boxes, reading, sharing, change, travel, times_as_many, chairs, savings, bakery]


def make(seed: int = 15, per_template: int = 10) -> list[dict]:
    r = random.Random(seed)
    records, seen = [], set()
    for template in TEMPLATES:
        made = 0
        while made < per_template:
            question, answer = template(r)
            if question in seen:
                continue
            seen.add(question)
            assert isinstance(answer, int) and answer > 0, (question, answer)
            made += 1
            records.append({"id": f"wp_{len(records) + 1:03d}", "question": question, "answer": answer,
                            "template": template.__name__, "synthetic": True})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    records = make(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} synthetic problems to {args.out}")


if __name__ == "__main__":
    main()
