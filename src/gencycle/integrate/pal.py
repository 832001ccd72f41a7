"""Program-aided answers (PAL, Gao et al., 2022): the model writes a program, the sandbox runs it.

    results = solve_with_programs(llm, ["A box holds 12 eggs. How many eggs are in 7 boxes?"])
    results[0].program, results[0].answer        # "eggs = 12 * 7\\nprint(eggs)", "84"
    direct = answer_directly(llm, [...])          # the same model, answering without a program

Both use the same three worked examples (written for gencycle; none is in the word-problem set):
PAL's show a short program that prints the answer, direct answering's the answer in words. The
program runs in `gencycle.integrate.sandbox.run_python` (AST check, restricted builtins, a
child process under CPU, memory, output and wall-time limits); its printed output is the answer.
The reply to a PAL prompt starts with "```python" (the program's opening fence), so the model
writes code from its first token, and generation stops at the closing fence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .sandbox import SandboxResult, run_python

EXAMPLES = [
    ("A farmer has 14 cows and buys 9 more. Then 5 cows are sold. How many cows does the farmer have now?",
     "cows = 14\ncows = cows + 9\ncows = cows - 5\nprint(cows)", "18"),
    ("Each bag holds 6 oranges. Lena fills 8 bags and has 3 oranges left over. How many oranges did she have?",
     "bags = 8\nper_bag = 6\nleft_over = 3\ntotal = bags * per_bag + left_over\nprint(total)", "51"),
    ("A school trip costs 45 dollars per student. 20 students go, and the school pays 300 dollars of the total. "
     "How much do the students pay altogether?",
     "cost = 45 * 20\nschool_pays = 300\nprint(cost - school_pays)", "600"),
]
PAL_INSTRUCTIONS = ("Solve the math word problem by writing a short Python program that computes the answer "
                    "and prints it. Reply with the program only.")
DIRECT_INSTRUCTIONS = "Solve the math word problem. Reply with the answer only, as a number."
FENCE = "```python\n"


@dataclass
class PalResult:
    """question; completion: what the model wrote; program: the code run; run: the sandbox's result
    (None when there was no program); answer: the printed output (None when it failed)."""
    question: str
    completion: str
    program: str
    run: SandboxResult | None
    answer: str | None

    @property
    def number(self) -> float | None:
        return parse_number(self.answer) if self.answer is not None else None


@dataclass
class DirectResult:
    question: str
    completion: str

    @property
    def number(self) -> float | None:
        return parse_number(self.completion)


def pal_messages(question: str) -> list[dict]:
    messages = [{"role": "system", "content": PAL_INSTRUCTIONS}]
    for q, program, _ in EXAMPLES:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": f"{FENCE}{program}\n```"}]
    return messages + [{"role": "user", "content": question}]


def direct_messages(question: str) -> list[dict]:
    messages = [{"role": "system", "content": DIRECT_INSTRUCTIONS}]
    for q, _, answer in EXAMPLES:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": question}]


def extract_program(completion: str) -> str:
    """The code in a completion: up to a closing fence (the prompt opened the first one)."""
    return completion.split("```")[0].strip("\n")


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    """The last number written in `text` (thousands separators allowed), or None."""
    found = _NUMBER.findall(text or "")
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _complete(llm, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...], batch_size: int,
              progress: bool, desc: str) -> list[str]:
    from tqdm.auto import tqdm

    from ..generation import generate
    config = llm.make_config(max_new_tokens=max_new_tokens, do_sample=False, stop=stop)
    templated = bool(llm.tokenizer.chat_template)
    out: list[str] = []
    with tqdm(total=len(prompts), desc=desc, unit="question", disable=not progress, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            ids, mask = llm.encode(prompts[start:start + batch_size], templated=templated)
            tokens = generate(llm.model, ids, mask, config, tokenizer=llm.tokenizer)
            out += llm.completions(tokens, ids.shape[1], config)
            bar.update(len(prompts[start:start + batch_size]))
    return out


def _render(llm, messages: list[dict], reply_start: str = "") -> str:
    if llm.tokenizer.chat_template:
        return llm.format_chat(messages) + reply_start
    lines = [m["content"] if m["role"] == "system" else
             f"{'Question' if m['role'] == 'user' else 'Answer'}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAnswer: " + reply_start


def solve_with_programs(llm, questions: list[str], batch_size: int = 8, max_new_tokens: int = 160,
                        timeout_s: float = 5.0, progress: bool = False) -> list[PalResult]:
    """PAL, greedy: a program per question, each run in the sandbox."""
    prompts = [_render(llm, pal_messages(q), FENCE) for q in questions]
    completions = _complete(llm, prompts, max_new_tokens, ("```",), batch_size, progress, "PAL programs")
    results = []
    for question, completion in zip(questions, completions):
        program = extract_program(completion)
        run = run_python(program, timeout_s=timeout_s) if program.strip() else None
        results.append(PalResult(question, completion, program, run, run.answer if run is not None else None))
    return results


def answer_directly(llm, questions: list[str], batch_size: int = 8, max_new_tokens: int = 32,
                    progress: bool = False) -> list[DirectResult]:
    """The same model answering in words (greedy, the same worked examples)."""
    prompts = [_render(llm, direct_messages(q)) for q in questions]
    completions = _complete(llm, prompts, max_new_tokens, ("\n\n",), batch_size, progress, "direct answers")
    return [DirectResult(q, c) for q, c in zip(questions, completions)]
