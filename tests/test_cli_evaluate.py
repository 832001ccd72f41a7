"""`gencycle prompt` and `gencycle evaluate` on a tiny random chat model and a tiny DialogSum folder."""

import json

import pytest

from gencycle.cli import main
from gencycle.prompting import FewShotBuilder
from tiny_llm import records, save_tiny_chat_model, write_dialogsum


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(save_tiny_chat_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_dialogsum(tmp_path_factory.mktemp("data")))


def test_prompt_prints_the_prompt_and_completion(model, data, capsys):
    assert main(["prompt", model, "--data", data, "--shots", "2", "--index", "1", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    prompt = FewShotBuilder.from_templates("dialogsum", records(["t1", "t2", "t3"])).build(records(["t5"])[0], 0).text
    assert "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n" in out  # the query, last
    assert "<|im_start|>assistant\n#Person2# says it is sunny.<|im_end|>" in out  # the 2nd example's answer
    assert "===== completion (greedy) =====" in out
    assert out.rstrip().endswith(records(["t5"])[0]["summary"])  # the human reference comes last


def test_prompt_plain_and_random(model, data, capsys):
    assert main(["prompt", model, "--data", data, "--shots", "1", "--select", "random", "--plain",
                 "--max-new-tokens", "3", "--config", "sample:temperature=0.7"]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>" not in out.split("===== completion")[0]
    assert "Summary: #Person" in out and out.count("Summarize the following conversation.") == 2


def test_evaluate_writes_the_report(model, data, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    assert main(["evaluate", model, "--data", data, "--split", "test", "--shots", "0,1",
                 "--config", "greedy", "--config", "sample:temperature=0.7,top_p=0.9",
                 "--limit", "2", "--max-new-tokens", "4", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "1-shot, sample:temperature=0.7,top_p=0.9 |" in out and f"wrote {out_dir / 'report.md'}" in out
    saved = json.loads((out_dir / "scores.json").read_text())
    assert [v["name"] for v in saved["variants"]] == ["0-shot, greedy", "0-shot, sample:temperature=0.7,top_p=0.9",
                                                       "1-shot, greedy", "1-shot, sample:temperature=0.7,top_p=0.9"]
    assert saved["ids"] == ["t4", "t5"]
    for name in ("report.html", "scores.png", "side_by_side.md"):
        assert (out_dir / name).exists()


def test_single_file_is_queries_and_pool(model, tmp_path, capsys):
    file = tmp_path / "all.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in records()))
    assert main(["prompt", model, "--data", str(file), "--shots", "5", "--index", "0", "--max-new-tokens", "2"]) == 0
    prompt = capsys.readouterr().out.split("===== completion")[0]
    assert prompt.count("Summarize the following conversation.") == 6  # 5 others + the query


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--shots", "0,x"], "argument --shots: expected ints separated by commas"),
    (["evaluate", "--config", "nucleus"], "must start with one of greedy"),
    (["evaluate", "--config", "sample:top_p=1.5"], "top_p"),
    (["prompt", "--index", "99"], "--index 99 is out of range"),
    (["evaluate", "--split", "nope"], "unknown split"),
])
def test_bad_arguments_are_named(model, data, argv, message, capsys):
    assert main(argv[:1] + [model, "--data", data] + argv[1:]) == 2
    assert message in capsys.readouterr().err
