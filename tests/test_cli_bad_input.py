"""Every CLI verb over a table of bad input (issue 12): exit status 2, no traceback, and a message that
names the flag or the file.

The table is made from the parsers themselves, so a verb or flag added later is covered without an
edit here: every numeric flag of every verb at 0 and at -1, every path argument at a missing path, at
a file where a folder is expected (or the other way round), at a folder without the expected files,
and every output folder at an existing file. A flag may accept 0 only if its help says what 0 does
(a standalone 0, as in "0: none", ">= 0", "(default: 0)"), and a negative value only if its help says
"negative"; anything else must be refused before any work. Cases run in-process through
`gencycle.cli.main` on a tiny random chat model; a few run as a subprocess to show that no traceback
reaches stderr. `gencycle serve` is kept from serving: reaching the server with a bad value fails.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gencycle.cli import build_parser, main
from tiny_llm import save_tiny_chat_model, write_dialogsum

pytestmark = pytest.mark.usefixtures("one_thread")

# A valid call of each verb ({placeholders} are the fixture's files); the cases add one bad argument.
BASE = {
    "finetune": ["{model}", "--data", "{pairs}", "--max-steps", "1", "--rouge-examples", "0", "--no-progress",
                 "--out", "{out}"],
    "prompt": ["{model}", "--data", "{data}", "--max-new-tokens", "2"],
    "evaluate": ["{model}", "--data", "{data}", "--limit", "1", "--shots", "0", "--max-new-tokens", "2",
                 "--out", "{out}"],
    "generate": ["{model}", "hello", "--max-new-tokens", "2"],
    "chat": ["{model}", "--max-new-tokens", "2"],
    "info": ["{model}"],
    "attention": ["{model}", "hello there", "--out", "{out}/attention.png"],
    "merge": ["{model}", "{adapter}", "--out", "{out}"],
    "estimate": ["{model}"],
    "tokenizer train": ["{corpus}", "--vocab-size", "300", "--out", "{out}"],
    "dpo": ["{model}", "--data", "{preferences}", "--max-steps", "1", "--no-progress", "--out", "{out}"],
    "rlhf": ["{model}", "--prompts", "{prompts}", "--reward", "profanity", "--max-steps", "1", "--no-progress",
             "--out", "{out}"],
    "reward train": ["{model}", "--data", "{labelled}", "--max-steps", "1", "--no-progress", "--out", "{out}"],
    "reward score": ["{model}", "hello"],
    "pretrain": ["--data", "{corpus}", "--tokenizer", "{model}", "--max-steps", "1", "--no-progress",
                 "--out", "{out}"],
    "serve": ["{model}"],
    "agent": ["what is 2 + 2?", "--model", "{model}", "--max-steps", "1", "--max-new-tokens", "4"],
    "rag index": ["{corpus}", "--index", "{out}/index"],
    "rag search": ["{index}", "fox"],
    "rag ask": ["{index}", "what does the fox do?", "--model", "{model}", "--max-new-tokens", "4"],
}
MINE = {"finetune", "prompt", "evaluate", "generate", "chat", "info", "attention", "merge"}

# Path arguments: (verb, argument, expected kind). The argument is a flag or the index of a positional
# in the BASE argv. "folder": a model or adapter folder; "file": a data / text file; "either".
PATHS = [
    ("finetune", 0, "model"), ("finetune", "--data", "data"), ("finetune", "--eval-data", "data"),
    ("finetune", "--test-data", "data"), ("finetune", "--general-text", "text"), ("finetune", "--out", "out"),
    ("prompt", 0, "model"), ("prompt", "--data", "data"),
    ("evaluate", 0, "model"), ("evaluate", "--data", "data"), ("evaluate", "--out", "out"),
    ("generate", 0, "model"), ("chat", 0, "model"), ("info", 0, "model"),
    ("attention", 0, "model"), ("attention", "--out", "image"),
    ("merge", 0, "model"), ("merge", 1, "adapter"), ("merge", "--out", "out"),
    ("estimate", 0, "model"),
    ("tokenizer train", 0, "text"), ("tokenizer train", "--out", "out"),
    ("dpo", 0, "model"), ("dpo", "--data", "data"), ("dpo", "--out", "out"),
    ("rlhf", 0, "model"), ("rlhf", "--prompts", "data"), ("rlhf", "--out", "out"),
    ("reward train", 0, "model"), ("reward train", "--data", "data"), ("reward train", "--out", "out"),
    ("reward score", 0, "model"),
    ("pretrain", "--tokenizer", "tokenizer"), ("pretrain", "--out", "out"),
    ("serve", 0, "model"), ("serve", "--embedding-model", "model"),
    ("rag index", 0, "text"), ("rag index", "--index", "out"), ("rag index", "--embedder", "model"),
    ("rag search", 0, "index"), ("rag ask", 0, "index"), ("rag ask", "--model", "model"),
    ("agent", "--model", "model"),
]
# The bad values of each kind: a missing path, the wrong kind of path, a folder without the files.
BAD_PATHS = {
    "model": ["{missing}", "{file}", "{empty}"],
    "adapter": ["{missing}", "{file}", "{empty}"],
    "data": ["{missing}", "{empty}", "{file}"],
    "text": ["{missing}", "{empty}"],
    "out": ["{file}"],
    "image": ["{empty}"],
    "tokenizer": ["{file}"],   # pretrain trains a tokenizer into a missing or empty folder
    "index": ["{missing}", "{file}", "{empty}"],
}
ZERO = re.compile(r"(?<![\w.<>])(?<![<>] )0(?:\.0+)?(?![\w]|\.\d)")


def verbs(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) of every command, sub-commands as "reward train"."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        yield prefix, parser
        return
    for name, child in sub.choices.items():
        yield from verbs(child, f"{prefix} {name}".strip())


PARSERS = dict(verbs(build_parser()))


def numeric(action: argparse.Action) -> bool:
    return getattr(action.type, "__name__", None) in ("int", "float", "count") or action.type in (int, float)


def documents(action: argparse.Action, value: str) -> bool:
    """Whether the flag's help says what `value` ("0" or "-1") does."""
    text = action.help or ""
    return bool(ZERO.search(text)) if value == "0" else "negative" in text.lower()


def numeric_cases():
    for verb, parser in PARSERS.items():
        for action in parser._actions:
            if not action.option_strings or not numeric(action):
                continue
            flag = max(action.option_strings, key=len)
            for value in ("0", "-1"):
                if documents(action, value):
                    continue
                count = action.nargs if isinstance(action.nargs, int) else 1
                yield pytest.param(verb, [f"{flag}={value}"] if count == 1 else [flag, *[value] * count],
                                   (flag, action.dest), id=f"{verb} {flag} {value}")


def path_cases():
    for verb, where, kind in PATHS:
        if verb not in PARSERS:
            continue
        for bad in BAD_PATHS[kind]:
            yield pytest.param(verb, where, bad, id=f"{verb} {where} {bad.strip('{}')}")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    model = save_tiny_chat_model(root / "model")
    data = write_dialogsum(root / "data")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n" for i in range(8)))
    preferences = root / "preferences.jsonl"
    preferences.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                                   for i in range(4)))
    labelled = root / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8)))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {i}"}) + "\n" for i in range(4)))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)))
    (root / "notes.txt").write_text("not a model, nor data\n")
    import gencycle
    from gencycle.adapters import apply_lora, save_adapter
    save_adapter(apply_lora(gencycle.load_model(model, device="cpu"), rank=2), root / "adapter")
    if "rag index" in PARSERS:  # an index for rag search / ask (MiniLM embeddings of the corpus)
        assert main(["rag", "index", str(corpus), "--index", str(root / "index"), "--no-progress"]) == 0
    return {"index": str(root / "index"), "model": str(model), "data": str(data), "pairs": str(pairs), "preferences": str(preferences),
            "labelled": str(labelled), "prompts": str(prompts), "corpus": str(corpus),
            "adapter": str(root / "adapter"), "file": str(root / "notes.txt")}


class Timeout(Exception):
    pass


def run(argv: list[str], capsys, seconds: int = 120) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `gencycle ARGV` in this process; an exception that escapes
    main (a traceback) fails the test, and so does a call that runs for `seconds`."""
    def alarm(signum, frame):
        raise Timeout(f"gencycle {' '.join(argv)} ran for {seconds} s: the bad value was not refused up front")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        code = main(argv)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any escape is a traceback for the user
        out, err = capsys.readouterr()
        pytest.fail(f"gencycle {' '.join(argv)} raised {type(error).__name__}: {error}\n{err[-1500:]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def guarded(monkeypatch):
    """No verb may start serving or wait on the terminal here."""
    import gencycle.serve

    def no_serving(*args, **kwargs):
        raise AssertionError("gencycle serve got as far as serving with a bad value")

    monkeypatch.setattr(gencycle.serve, "serve", no_serving)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


def paths(files: dict, tmp_path: Path) -> dict:
    """The fixture's files, and this test's own output folder, missing path and empty folder (a case
    may create them: pretrain trains a tokenizer into a missing folder)."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    return {**files, "out": str(tmp_path / "out"), "missing": str(tmp_path / "no-such-path"),
            "empty": str(tmp_path / "empty")}


def argv_of(verb: str, values: dict, extra=()) -> list[str]:
    return verb.split() + [arg.format(**values) for arg in BASE[verb]] + list(extra)


def refused(code: int, err: str, names) -> str | None:
    """Why this is not a clean refusal naming one of `names`, or None."""
    if code != 2:
        return f"exit status {code}, not 2"
    if "Traceback" in err:
        return "a traceback"
    if not any(name and name in err for name in names):
        return f"the message does not name {' or '.join(n for n in names if n)}"
    return None


def test_every_verb_has_a_valid_base_call():
    missing = sorted(set(PARSERS) - set(BASE))
    assert not missing, f"add a valid call of {missing} to BASE, so the table covers them"


@pytest.mark.parametrize("verb", sorted(MINE))
def test_the_base_call_runs(verb, files, tmp_path, capsys, guarded):
    """The bad-value cases below differ from a call that works by their one bad argument."""
    code, out, err = run(argv_of(verb, paths(files, tmp_path)), capsys)
    assert code == 0, err[-1500:]


@pytest.mark.parametrize("verb, extra, names", list(numeric_cases()))
def test_numbers_at_zero_and_negative_are_refused(verb, extra, names, files, tmp_path, capsys, guarded):
    if verb not in BASE:
        pytest.fail(f"no BASE call for {verb}")
    code, out, err = run(argv_of(verb, paths(files, tmp_path), extra), capsys)
    flag, dest = names
    problem = refused(code, err, (flag, dest, dest.replace("_", " ")))
    assert problem is None, f"{' '.join(extra)}: {problem}; stderr: {err[-800:]!r}"


@pytest.mark.parametrize("verb, where, bad", list(path_cases()))
def test_bad_paths_are_refused_naming_the_file(verb, where, bad, files, tmp_path, capsys, guarded):
    values = paths(files, tmp_path)
    argv, path = argv_of(verb, values), bad.format(**values)
    if isinstance(where, int):
        argv[len(verb.split()) + where] = path
        names = (path, )
    else:
        argv += [where, path]
        names = (path, where)
    code, out, err = run(argv, capsys)
    problem = refused(code, err, names)
    assert problem is None, f"{where} = {bad}: {problem}; stderr: {err[-800:]!r}"


def test_every_numeric_flag_refuses_nan_and_infinity():
    """`estimate --mfu inf` was accepted (a run of 0 s): every number a flag takes is finite."""
    accepted = []
    for verb, parser in PARSERS.items():
        for action in parser._actions:
            if action.option_strings and numeric(action):
                for text in ("nan", "inf", "-inf"):
                    try:
                        action.type(text)
                    except (argparse.ArgumentTypeError, ValueError):
                        continue
                    accepted.append(f"{verb} {max(action.option_strings, key=len)} {text}")
    assert not accepted, accepted


def test_every_flag_has_help_and_says_its_default():
    """Every flag of every verb has a help line; one whose default is a value says that value (argparse
    lists the choices of a flag that has them)."""
    problems = []
    for verb, parser in PARSERS.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = max(action.option_strings, key=len) if action.option_strings else action.dest
            if not (action.help or "").strip():
                problems.append(f"{verb} {name}: no help")
            elif action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                    and "default" not in action.help.lower():
                problems.append(f"{verb} {name}: the help does not say the default {action.default!r}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- no traceback reaches stderr (subprocess)
@pytest.mark.parametrize("argv, stdin, message", [
    (["finetune", "{model}", "--data", "{pairs}", "--max-grad-norm=-1"], None, "argument --max-grad-norm"),
    (["chat", "{model}", "--max-new-tokens", "2"], b"hi \xff there\n/exit\n", None),
], ids=["finetune-grad-norm", "chat-stdin"])
def test_no_traceback_reaches_stderr(argv, stdin, message, files, tmp_path):
    args = [a.format(**paths(files, tmp_path)) for a in argv]
    run = subprocess.run([sys.executable, "-m", "gencycle.cli", *args], input=stdin, capture_output=True,
                         timeout=300)
    err = run.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-2000:]
    if message is None:  # chat: the line is refused, the session goes on
        assert run.returncode == 0 and "that line is not UTF-8 text" in err, err[-2000:]
    else:
        assert run.returncode == 2 and message in err, err[-2000:]


# ---------------------------------------------------------------- each silent wrong answer of the issue
def test_max_grad_norm_negative_and_zero_refused_none_turns_clipping_off(files, tmp_path, capsys):
    from gencycle.errors import OptionError
    from gencycle.training import TrainConfig
    for value in (-1.0, 0.0):
        with pytest.raises(OptionError, match="max_grad_norm must be > 0") as error:
            TrainConfig(max_grad_norm=value)
        assert error.value.option == "max_grad_norm"
    code, _, err = run(["finetune", files["model"], "--data", files["pairs"], "--max-grad-norm", "0"], capsys)
    assert code == 2 and "argument --max-grad-norm: must be > 0" in err and "none" in err
    out = tmp_path / "run"
    code, _, err = run(["finetune", files["model"], "--data", files["pairs"], "--max-grad-norm", "none",
                        "--max-steps", "2", "--rouge-examples", "0", "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and all(step["grad_norm"] is None for step in steps)  # not clipped, not measured


def test_evaluate_batch_size_negative_is_refused_and_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run(["evaluate", files["model"], "--data", files["data"], "--batch-size", "-2",
                        "--out", str(out)], capsys)
    assert code == 2 and "argument --batch-size: must be an integer >= 1, got -2" in err
    assert not out.exists()


def test_a_specs_own_max_new_tokens_is_honoured(files, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run(["evaluate", files["model"], "--data", files["data"], "--shots", "0", "--limit", "2",
                        "--config", "greedy:max_new_tokens=3", "--config", "greedy", "--max-new-tokens", "5",
                        "--out", str(out)], capsys)
    assert code == 0, err
    assert "sets max_new_tokens=3 itself" in err  # the flag does not apply to that spec, and it says so
    variants = json.loads((out / "scores.json").read_text())["variants"]
    assert [(v["name"], v["settings"]["generation"]["max_new_tokens"]) for v in variants] == \
        [("0-shot, greedy:max_new_tokens=3", 3), ("0-shot, greedy", 5)]


def test_lr_zero_is_refused_not_replaced_by_the_default(files, capsys):
    from gencycle.workflows import FinetuneConfig, override
    with pytest.raises(ValueError, match="lr must be positive, got 0"):
        override(FinetuneConfig(), lr=0.0)
    code, _, err = run(["finetune", files["model"], "--data", files["pairs"], "--lr", "0"], capsys)
    assert code == 2 and "argument --lr: must be positive, got 0.0" in err


def test_resume_with_more_steps_follows_the_new_schedule_and_says_so(files, tmp_path, capsys):
    from gencycle.training import TrainConfig
    from gencycle.training.loop import lr_lambda
    out = tmp_path / "run"
    args = ["finetune", files["model"], "--data", files["pairs"], "--batch-size", "2", "--lr", "1e-3",
            "--rouge-examples", "0", "--checkpoint-every", "2", "--no-progress", "--out", str(out)]
    code, _, err = run(args + ["--resume", "--max-steps", "4"], capsys)
    assert code == 0 and "resume: no checkpoint in" in err and "starting from step 0" in err
    code, _, err = run(args + ["--resume", "--max-steps", "8"], capsys)
    assert code == 0, err
    assert "resumed from" in err and "step 4 of 8" in err and "max_steps 4 -> 8" in err
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    schedule = lr_lambda(TrainConfig(max_steps=8), 8)
    assert len(lrs) == 8 and lrs[4] == pytest.approx(1e-3 * schedule(4)) and lrs[4] > 0  # not the old end, 0.0
    assert lrs[5:] == pytest.approx([1e-3 * schedule(s) for s in range(5, 8)])


@pytest.mark.parametrize("make, option", [
    (lambda: __import__("gencycle.workflows", fromlist=["x"]).MeasureConfig(rouge_examples=-1), "rouge_examples"),
    (lambda: __import__("gencycle.workflows", fromlist=["x"]).LoraConfig(lora_alpha=0), "lora_alpha"),
    (lambda: __import__("gencycle.workflows", fromlist=["x"]).TrainConfig(weight_decay=-1.0), "weight_decay"),
], ids=["rouge-examples", "lora-alpha", "weight-decay"])
def test_values_that_used_to_be_accepted_are_refused(make, option):
    from gencycle.errors import OptionError
    with pytest.raises(OptionError) as error:
        make()
    assert error.value.option == option


def test_attention_out_without_suffix_names_the_file_written(files, tmp_path, capsys):
    code, out, _ = run(["attention", files["model"], "hello there", "--out", str(tmp_path / "noext")], capsys)
    assert code == 0 and f"wrote {tmp_path / 'noext.png'} (" in out
    assert (tmp_path / "noext.png").is_file() and not (tmp_path / "noext").exists()


def test_raw_with_system_is_refused(files, capsys):
    code, _, err = run(["generate", files["model"], "hello", "--raw", "--system", "be brief"], capsys)
    assert code == 2 and "--system" in err and "--raw" in err


def test_sampling_settings_without_do_sample_warn_in_the_api_and_the_cli_alike(files, capsys):
    from gencycle import LLM
    llm = LLM.load(files["model"], device="cpu")
    greedy = llm.chat([{"role": "user", "content": "hello"}], max_new_tokens=6)
    with pytest.warns(UserWarning, match=r"temperature=1.5 ignored: do_sample is False"):
        assert llm.chat([{"role": "user", "content": "hello"}], max_new_tokens=6, temperature=1.5) == greedy
    code, out, err = run(["generate", files["model"], "hello", "--max-new-tokens", "6", "--temperature", "1.5"],
                         capsys)
    assert code == 0 and out == greedy + "\n" and "--temperature 1.5 ignored without --do-sample" in err
    sampled = llm.chat([{"role": "user", "content": "hello"}], max_new_tokens=6, do_sample=True, temperature=1.5,
                       seed=3)
    code, out, err = run(["generate", files["model"], "hello", "--max-new-tokens", "6", "--temperature", "1.5",
                          "--do-sample", "--seed", "3"], capsys)
    assert code == 0 and out == sampled + "\n" and "warning" not in err


# ---------------------------------------------------------------- tracebacks for user mistakes
def test_non_utf8_prompt_and_stdin_are_named(files, capsys, monkeypatch):
    code, _, err = run(["generate", files["model"], "hi \udcff there", "--max-new-tokens", "2"], capsys)
    assert code == 2 and "the prompt is not UTF-8 text: byte 0xff at character 3" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hi \xff there")))
    code, _, err = run(["generate", files["model"], "-", "--max-new-tokens", "2"], capsys)
    assert code == 2 and "standard input is not UTF-8 text: byte 0xff at byte 3" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hi \xff there\nhello\n/exit\n")))
    code, out, err = run(["chat", files["model"], "--max-new-tokens", "2"], capsys)
    assert code == 0 and "that line is not UTF-8 text" in err and out.count("assistant> ") == 1  # it went on


def test_a_device_this_machine_lacks_is_refused_before_the_model_loads(files, capsys, monkeypatch):
    from gencycle import checkpoints

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(checkpoints, "_load", loaded)
    for verb in (["generate", files["model"], "hi"], ["info", files["model"]],
                 ["finetune", files["model"], "--data", files["pairs"]],
                 ["evaluate", files["model"], "--data", files["data"]]):
        if verb[0] == "info":
            continue  # info always reads on the CPU
        code, _, err = run(verb + ["--device", "cuda:99"], capsys)
        assert code == 2 and "argument --device: 'cuda:99' cannot be used" in err, (verb[0], err)


def test_unknown_template_is_named(files, capsys):
    code, _, err = run(["finetune", files["model"], "--data", files["pairs"], "--template", "foo"], capsys)
    assert code == 2 and "argument --template: unknown prompt template 'foo'; known: dialogsum" in err


@pytest.mark.parametrize("verb", ["finetune", "evaluate"])
def test_out_naming_a_file_is_refused_before_any_work(verb, files, capsys, monkeypatch):
    from gencycle import checkpoints

    def loaded(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(checkpoints, "_load", loaded)
    data = files["pairs"] if verb == "finetune" else files["data"]
    code, _, err = run([verb, files["model"], "--data", data, "--out", files["file"]], capsys)
    assert code == 2 and f"argument --out: names an existing file, {files['file']!r}" in err


# ---------------------------------------------------------------- other things a user trips on
def test_long_waits_show_progress(files, tmp_path, capsys):
    code, _, err = run(["finetune", files["model"], "--data", files["data"], "--eval-data", files["pairs"],
                        "--max-steps", "1", "--rouge-examples", "2", "--max-new-tokens", "2",
                        "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    for bar in ("ROUGE prompts before", "eval loss", "training", "ROUGE prompts after"):
        assert bar in err, bar
    code, _, err = run(["prompt", files["model"], "--data", files["data"], "--select", "similar", "--shots", "1",
                        "--max-new-tokens", "2"], capsys)
    assert code == 0 and "embedding the example pool" in err, err[-500:]


def test_attention_draws_a_capped_number_of_tokens_and_says_so(files, tmp_path, capsys):
    import struct
    text = " ".join(["hello there"] * 60)
    code, out, _ = run(["attention", files["model"], text, "--out", str(tmp_path / "a.png")], capsys)
    assert code == 0 and "the first 48 of" in out and "--max-tokens raises the cap" in out
    width, height = struct.unpack(">II", (tmp_path / "a.png").read_bytes()[16:24])  # the PNG header's IHDR
    assert width * height < 12e6, (width, height)


def test_merge_onto_a_gguf_model_gives_a_folder_generate_runs(tmp_path, capsys):
    """A .gguf base (like the packaged SmolLM2) carries its tokenizer and chat template in its metadata:
    the merged folder gets them as tokenizer.json + tokenizer_config.json."""
    import gencycle
    from gencycle.adapters import apply_lora, save_adapter
    from test_gguf import write_tiny_llama_gguf
    from tiny_llm import CHATML
    write_tiny_llama_gguf(tmp_path / "tiny.gguf", metadata=lambda writer: writer.add_chat_template(CHATML))
    save_adapter(apply_lora(gencycle.load_model(tmp_path / "tiny.gguf", device="cpu"), rank=2), tmp_path / "adapter")
    code, out, err = run(["merge", str(tmp_path / "tiny.gguf"), str(tmp_path / "adapter"), "--out",
                          str(tmp_path / "merged")], capsys)
    assert code == 0, err
    base, merged = gencycle.load_tokenizer(tmp_path / "tiny.gguf"), gencycle.load_tokenizer(tmp_path / "merged")
    text = "the cat, then: 'hi'!"
    assert merged.encode(text) == base.encode(text) and merged.chat_template == CHATML
    assert merged.eos_token_id == base.eos_token_id
    code, out, err = run(["generate", str(tmp_path / "merged"), "hello", "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    from gencycle import LLM
    assert out == LLM.load(tmp_path / "tiny.gguf", device="cpu").chat([{"role": "user", "content": "hello"}],
                                                                     max_new_tokens=4) + "\n"  # B = 0: the base


@pytest.mark.slow
def test_merge_onto_the_packaged_model_gives_a_folder_generate_runs(tmp_path, capsys):
    import gencycle
    from gencycle.adapters import apply_lora, save_adapter
    model = apply_lora(gencycle.load_model("smollm2-135m-instruct", device="cpu"), rank=4)  # B = 0
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path="smollm2-135m-instruct")
    code, _, err = run(["merge", "smollm2-135m-instruct", str(tmp_path / "adapter"), "--out",
                        str(tmp_path / "merged")], capsys, seconds=600)
    assert code == 0, err
    code, out, err = run(["generate", str(tmp_path / "merged"), "What is the capital of France?",
                          "--max-new-tokens", "20"], capsys, seconds=600)
    assert code == 0 and "Paris" in out, (out, err)
