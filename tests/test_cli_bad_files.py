"""Bad files and values beyond tests/test_cli_bad_input.py's table (issue 12), each found by probing
the verbs on 2026-12-01 and failing then (a traceback, exit 0 or 1, or a message naming neither the
file nor the flag): a config.json with sizes that are not positive integers, damaged files next to a
good config.json that `serve` only met after it had started, a device name torch does not know, config
.json files for estimate / pretrain that are malformed, not UTF-8 or not a model config, a garbage
.gguf, reward labels that are no label, an --out that is a file for tokenizer train, chunk sizes the
embedder cannot read. Every case: exit status 2, no traceback, the file (or flag) named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli_bad_input import guarded, refused, run  # noqa: F401 - guarded is a fixture
from tiny_llm import save_tiny_chat_model

pytestmark = pytest.mark.usefixtures("one_thread", "guarded")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-files")
    model = save_tiny_chat_model(root / "model")
    config = json.loads((model / "config.json").read_text())

    def clone(name: str, file: str, data) -> None:
        shutil.copytree(model, root / name)
        (root / name / file).write_bytes(data if isinstance(data, bytes) else data.encode())

    clone("hidden-size-text", "config.json", json.dumps({**config, "hidden_size": "big"}))
    clone("negative-layers", "config.json", json.dumps({**config, "num_hidden_layers": -1}))
    clone("garbage-weights", "model.safetensors", b"garbage" * 10)
    clone("truncated-tokenizer", "tokenizer.json", (model / "tokenizer.json").read_text()[:500])
    clone("malformed-tokenizer-config", "tokenizer_config.json", "{not json")
    clone("bad-generation-config", "generation_config.json", json.dumps({"top_p": 5}))
    files = {"bad.json": "{oops", "list.json": "[1]", "bytes.json": b'{"x": "\xff"}',
             "no-sizes.json": json.dumps({"n_layer": 2}),
             "no-hidden-size.json": json.dumps({"model_type": "llama", "vocab_size": 300}),
             "garbage.gguf": b"GGUFxxxx", "corpus.txt": "\n".join(f"the fox {i} runs" for i in range(100))}
    for name, data in files.items():
        (root / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    rows = "".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(8))
    (root / "label-list.jsonl").write_text(rows + json.dumps({"text": "t", "label": [1]}) + "\n")
    (root / "label-nan.jsonl").write_text(rows + '{"text": "t", "label": NaN}\n')
    (root / "pairs.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n"
                                              for i in range(4)))
    for name, messages in (("messages-text", "hello"), ("messages-no-role", [{"content": "hi"}]),
                           ("messages-wizard", [{"role": "wizard", "content": "hi"}])):
        (root / f"{name}.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_text("the fox runs over the hill\n" * 20)
    return root


M = "{root}/model"
CASES = {
    # a config.json whose sizes no model can be built with: was a TypeError / RuntimeError from torch,
    # and `info` printed a model of -1 layers
    **{f"{verb} hidden_size text": ([verb, "{root}/hidden-size-text", *extra],
                                    "the model's hidden_size must be a positive integer, got 'big'")
       for verb, extra in (("generate", ["hi"]), ("info", []), ("estimate", []), ("serve", []))},
    **{f"{verb} negative layers": ([verb, "{root}/negative-layers", *extra],
                                   "the model's num_layers must be a positive integer, got -1")
       for verb, extra in (("generate", ["hi"]), ("info", []), ("serve", []))},
    # serve checks what it will load before it starts (it used to start, fail to load, exit 1)
    "serve garbage weights": (["serve", "{root}/garbage-weights"], "corrupt or truncated safetensors file"),
    "serve truncated tokenizer": (["serve", "{root}/truncated-tokenizer"], "tokenizer.json: not a readable"),
    "serve malformed tokenizer_config": (["serve", "{root}/malformed-tokenizer-config"],
                                         "tokenizer_config.json: malformed JSON"),
    "serve bad generation_config": (["serve", "{root}/bad-generation-config"],
                                    "generation_config.json: top_p must be a number in (0, 1]"),
    "serve garbage gguf": (["serve", "{root}/garbage.gguf"], "garbage.gguf' is not a GGUF file of version 2 or 3"),
    "serve embedding model file": (["serve", M, "--embedding-model", "{root}/corpus.txt"], "corpus.txt' is a file"),
    # a device name torch does not know: was a RuntimeError from torch.device
    **{f"{verb[0]} --device bogus": ([*verb, "--device", "bogus"], "argument --device: must be a device such as")
       for verb in (["generate", M, "hi"], ["chat", M], ["agent", "q", "--model", M],
                    ["rag", "ask", "{root}/no-index", "q", "--model", M])},
    # estimate's config .json: a KeyError traceback, messages without the file, or every size at its default
    "estimate malformed json": (["estimate", "{root}/bad.json"], "bad.json: malformed JSON at line 1"),
    "estimate list json": (["estimate", "{root}/list.json"], "list.json: expected a JSON object"),
    "estimate non-UTF-8 json": (["estimate", "{root}/bytes.json"], "bytes.json: not UTF-8 text"),
    "estimate no hidden_size": (["estimate", "{root}/no-hidden-size.json"],
                                "no-hidden-size.json: no 'hidden_size' field"),
    "estimate no sizes": (["estimate", "{root}/no-sizes.json"],
                          "no-sizes.json: neither a Hugging Face config.json (no model_type) nor gencycle's "
                          "ModelConfig (no vocab_size, hidden_size, num_layers, num_heads)"),
    "pretrain non-UTF-8 config": (["pretrain", "--data", "{root}/corpus.txt", "--tokenizer", M, "--config",
                                   "{root}/bytes.json", "--out", "{root}/pretrain-run"], "bytes.json: not UTF-8 text"),
    # a garbage .gguf: generate's tokenizer read it with the raw reader ("Sorry, file appears to be version ...")
    "generate garbage gguf": (["generate", "{root}/garbage.gguf", "hi"], "garbage.gguf' is truncated or corrupt"),
    # reward labels that are no label: a TypeError traceback (a list), a class named 'nan' trained (NaN)
    "reward train label list": (["reward", "train", M, "--data", "{root}/label-list.jsonl", "--out", "{root}/rw1"],
                                "label-list.jsonl: row 9: the label [1] is neither an integer index nor a name"),
    "reward train label NaN": (["reward", "train", M, "--data", "{root}/label-nan.jsonl", "--out", "{root}/rw2"],
                               "label-nan.jsonl: row 9: the label nan is neither an integer index nor a name"),
    "reward score malformed config": (["reward", "score", "{root}/bad-json-model", "hi"],
                                      "bad-json-model/config.json: malformed JSON"),
    # tokenizer train wrote nothing and said "File exists" after training
    "tokenizer train --out file": (["tokenizer", "train", "{root}/corpus.txt", "--vocab-size", "300", "--out",
                                    "{root}/corpus.txt"], "argument --out: names an existing file"),
    # the embedder's limit was named as chunk_tokens, not the flag
    "rag index chunk too long": (["rag", "index", "{root}/docs", "--index", "{root}/index", "--chunk-tokens",
                                  "1000", "--no-progress"], "argument --chunk-tokens: 1000 is more than the embedder"),
    # text that was not UTF-8 (argv holds it as lone surrogates): printed as replacement characters, or used
    **{f"{name} not UTF-8": (argv, f"{what} is not UTF-8 text: byte 0xff at character 3")
       for name, argv, what in (
           ("agent question", ["agent", "hi \udcff there", "--model", M], "the question"),
           ("rag search query", ["rag", "search", "{root}/no-index", "hi \udcff there"], "the query"),
           ("rag ask question", ["rag", "ask", "{root}/no-index", "hi \udcff there", "--model", M], "the question"),
           ("reward score text", ["reward", "score", M, "hi \udcff there"], "text 1"),
           ("generate --stop", ["generate", M, "hi", "--stop", "hi \udcff there"], "--stop"))},
    "generate --min-new-tokens above --max-new-tokens": (["generate", M, "hi", "--min-new-tokens", "5",
                                                          "--max-new-tokens", "2"],
                                                         "argument --min-new-tokens: must be at most --max-new-tokens (2)"),
    # a prompts row whose messages are no conversation: "the chat template refused this conversation: 'str
    # object' has no attribute 'role'", naming neither the file nor the row; a role it does not know: trained on
    **{f"rlhf messages {name}": (["rlhf", M, "--prompts", "{root}/" + file, "--chat-template", "--reward", "profanity",
                                  "--out", "{root}/rl"], f"{file}: row 1's 'messages' must be a list of")
       for name, file in (("not a list", "messages-text.jsonl"), ("without role", "messages-no-role.jsonl"),
                          ("unknown role", "messages-wizard.jsonl"))},
    # empty names that were accepted: serve started with no model name, pretrain sampled nothing
    "serve --served-model-name empty": (["serve", M, "--served-model-name", " "], "argument --served-model-name: is empty"),
    "pretrain --sample-prompts empty": (["pretrain", "--data", "{root}/corpus.txt", "--tokenizer", M, "--sample-prompts",
                                         "", "--out", "{root}/pretrain-run"], "argument --sample-prompts: must be non-empty"),
    # the flag, not the keyword argument of apply_lora
    "finetune --target matching nothing": (["finetune", M, "--data", "{root}/pairs.jsonl", "--method", "lora",
                                            "--target", "bogus_proj", "--out", "{root}/ft"],
                                           "argument --target: ['bogus_proj'] matched no Linear module"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_files_are_refused_naming_them(case, root, capsys):
    if case == "reward score malformed config" and not (root / "bad-json-model").exists():
        shutil.copytree(root / "model", root / "bad-json-model")
        (root / "bad-json-model" / "config.json").write_text("{oops")
    argv, message = CASES[case]
    code, out, err = run([a.format(root=root) for a in argv], capsys)
    problem = refused(code, err, (message,))
    assert problem is None, f"{problem}; stderr: {err[-800:]!r}"


def test_reward_labels_are_checked_in_the_api_too():
    from gencycle.alignment.reward_model import RewardDataError, label_names
    with pytest.raises(RewardDataError, match=r"rows.jsonl: row 2: the label True is neither"):
        label_names([{"text": "a", "label": 0}, {"text": "b", "label": True}], source="rows.jsonl")
    assert label_names([{"text": "a", "label": 0}, {"text": "b", "label": 1.0}]) == {0: "LABEL_0", 1: "LABEL_1"}
    assert label_names([{"text": "a", "label": "ok"}, {"text": "b", "label": "bad"}]) == {0: "bad", 1: "ok"}


@pytest.mark.parametrize("verb, argv, flags", [
    ("finetune", ["--lora-rank", "4", "--target", "all-linear", "--num-virtual-tokens", "4"],
     ["--lora-rank", "--target", "--num-virtual-tokens"]),
    ("finetune", ["--method", "prompt-tuning", "--lora-alpha", "8"], ["--lora-alpha"]),
    ("dpo", ["--method", "full", "--lora-rank", "4"], ["--lora-rank"]),
    ("rlhf", ["--method", "full", "--target", "mlp"], ["--target"]),
])
def test_options_of_another_method_warn_that_they_are_ignored(verb, argv, flags):
    """`finetune --lora-rank 4` (the default method is full) trained no adapter without a word."""
    import warnings
    from gencycle.cli import build_parser, command_parser
    from gencycle.cli.options import config_from_args
    from gencycle.workflows import FinetuneConfig
    from gencycle.workflows.dpo import DpoConfig
    from gencycle.workflows.rlhf import RlhfConfig
    parser = build_parser()
    base = ["m", "--data", "d"] if verb != "rlhf" else ["m", "--prompts", "p", "--reward", "profanity"]
    args = parser.parse_args([verb, *base, *argv])
    config = {"finetune": FinetuneConfig, "dpo": DpoConfig, "rlhf": RlhfConfig}[verb]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config_from_args(config, args)
    said = [str(w.message) for w in caught]
    assert sorted(said) == sorted(f"{flag} is an option of --method "
                                  f"{'prompt-tuning' if flag == '--num-virtual-tokens' else 'lora'}: ignored with "
                                  f"--method {args.method}" for flag in flags), said
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the method's own options, and defaults, say nothing
        config_from_args(config, parser.parse_args([verb, *base, "--method", "lora", "--lora-rank", "4"]))
    assert command_parser(parser, args).prog.endswith(verb)


def test_agent_index_without_the_search_tool_says_it_is_ignored(root, capsys):
    """`agent --index PATH` with the default tools (calculator, python) never read the index, without a word."""
    code, out, err = run(["agent", "what is 2 + 2?", "--model", str(root / "model"), "--index", str(root / "no-index"),
                          "--max-steps", "1", "--max-new-tokens", "2"], capsys)
    assert code == 0 and "warning: --index is read by the search tool only: ignored with --tools calculator python" \
        in err, err[-500:]


def test_reward_and_judge_settings_they_do_not_read_warn(root):
    """--reward-label with --reward profanity, or --judge-label without a classifier judge, were ignored silently."""
    import warnings
    from gencycle.workflows import override
    from gencycle.workflows.rlhf import RlhfConfig
    cases = [(dict(reward_label="toxic"), "profanity",
              "--reward-label is read by a reward model folder: ignored with --reward profanity"),
             (dict(reward_kind="prob", reward_on="prompt+completion"), "rewards.py:score",
              "--reward-kind and --reward-on are read by a reward model folder: ignored with --reward rewards.py:score"),
             (dict(judge_label="toxic"), "profanity", "--judge-label is read by a classifier folder among --judges: "
                                                      "ignored (no --judges)"),
             (dict(judge_label="toxic", judges=("profanity",)), "profanity",
              "--judge-label is read by a classifier folder among --judges: ignored with --judges profanity")]
    for values, reward, message in cases:
        with pytest.warns(UserWarning) as caught:
            override(RlhfConfig(), out=None, **values).warn_unused(reward)
        assert [str(w.message) for w in caught] == [message]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reward model folder and a classifier judge read them
        override(RlhfConfig(), out=None, reward_label="ok", judge_label="toxic",
                 judges=("profanity", str(root / "model"))).warn_unused(str(root / "model"))


def test_pretrain_tokenizer_settings_with_a_tokenizer_there_warn(root):
    from gencycle.training.distributed import setup
    from gencycle.workflows.pretrain import CorpusConfig, prepare_tokenizer
    with pytest.warns(UserWarning, match="--tokenizer-kind and --tokenizer-vocab-size train a tokenizer into a folder "
                                         "without one; .* has one, loaded as it is: they are ignored"):
        tokenizer, trained = prepare_tokenizer(str(root / "model"), [], "decoder", CorpusConfig(tokenizer_kind="unigram"),
                                               setup("cpu"))
    assert not trained and tokenizer.vocab_size > 0


def test_finetune_eval_every_without_eval_data_warns(root, capsys):
    code, _, err = run(["finetune", str(root / "model"), "--data", str(root / "pairs.jsonl"), "--eval-every", "1",
                        "--max-steps", "1", "--rouge-examples", "0", "--no-progress", "--out", str(root / "ft-eval")],
                       capsys)
    assert code == 0 and "warning: --eval-every needs eval data (--eval-data, or a folder's validation split)" in err


def test_prompt_init_text_with_vocab_init_is_refused():
    from gencycle.errors import OptionError
    from gencycle.workflows.finetune import PromptTuningConfig
    with pytest.raises(OptionError, match="prompt_init 'vocab' starts it from random tokens") as error:
        PromptTuningConfig(prompt_init="vocab", prompt_init_text="summarize:")
    assert error.value.option == "prompt_init_text"
    assert PromptTuningConfig(prompt_init_text="summarize:").prompt_init_text == "summarize:"  # random + text: text


def test_dpo_sampling_settings_without_reward_warn(root, capsys):
    """dpo --samples-per-prompt 8 without --reward trained on --data's pairs and said nothing."""
    preferences = root / "preferences.jsonl"
    preferences.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                                   for i in range(4)))
    code, _, err = run(["dpo", str(root / "model"), "--data", str(preferences), "--samples-per-prompt", "8",
                        "--reward-on", "prompt+completion", "--max-steps", "1", "--no-progress", "--out",
                        str(root / "dpo")], capsys)
    assert code == 0 and ("warning: --reward-on, --samples-per-prompt: settings of pairs sampled with --reward; "
                          "ignored without it") in err, err[-500:]
