"""Flags whose 0 is a meaningful value (issue 12): the help of each says what 0 does, and this file
proves the code does it. tests/test_cli_bad_input.py refuses every other 0 and negative value.

    serve --port 0             any free port; the log names the one it got, and the server answers there
    serve --max-queue 0        no request waits: one that finds the batch full is refused at once
    tokenizer train --extra-ids 0   a Unigram tokenizer without <extra_id_N> sentinels
    pretrain --temperature 0   the samples are greedy
    rag index --chunk-overlap 0     consecutive chunks share no token
    rag search --rrf-k 0       reciprocal rank fusion scores 1 / rank
    rlhf --kl-coef 0           no KL penalty: the score alone (and an adaptive coefficient stays 0)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tiny_llm import save_tiny_chat_model

from gencycle.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_chat_model(tmp_path_factory.mktemp("zeros") / "model")


def help_of(verb: str, flag: str) -> str:
    parser = build_parser()
    for word in verb.split():
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[word]
    return next(a.help for a in parser._actions if flag in a.option_strings)


@pytest.mark.slow  # a real server process: about 25 s on 2 busy cores
def test_serve_port_0_listens_on_a_free_port_and_says_which(model, tmp_path):
    assert "0: any free port" in help_of("serve", "--port")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("GENCYCLE_API_KEY", None)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "gencycle.cli", "serve", str(model), "--port", "0",
                                    "--no-compile", "--embedding-model", "none"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, port = time.monotonic() + 120, None
        while port is None:
            assert process.poll() is None, f"gencycle serve exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no 'Uvicorn running on' line after 120 s:\n{log.read_text()}"
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text())
            port = int(found[1]) if found else None
            time.sleep(0.1)
        assert port != 0
        while True:  # the model loads after the server starts: /health answers 503 until then
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"/health was not 200 after 120 s:\n{log.read_text()}"
            time.sleep(0.1)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_max_queue_0_lets_no_request_wait(model):
    from gencycle import LLM
    from gencycle.generation.engine import Engine, QueueFull
    from gencycle.serve import ServeConfig
    assert "0: none wait" in help_of("serve", "--max-queue")
    assert ServeConfig(max_queue=0).max_queue == 0
    llm = LLM.load(model, device="cpu")
    config = llm.make_config(max_new_tokens=200, min_new_tokens=200)
    prompt = llm.tokenizer.encode("hello there")
    with Engine(llm.model, llm.tokenizer, max_batch=1, max_queue=0) as engine:
        done = []
        engine.submit(prompt, config, on_event=done.append)  # a free row: it runs
        with pytest.raises(QueueFull):
            engine.submit(prompt, config, on_event=done.append)  # the batch is full, and nothing may wait
        deadline = time.monotonic() + 60
        while not (done and done[-1].finish_reason is not None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done[-1].finish_reason == "length"
        while engine.running and time.monotonic() < deadline:
            time.sleep(0.01)
        again = []
        engine.submit(prompt, llm.make_config(max_new_tokens=2), on_event=again.append)  # a row is free again
        while not (again and again[-1].finish_reason is not None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert again[-1].finish_reason is not None


def test_tokenizer_train_extra_ids_0_adds_no_sentinels(tmp_path, capsys):
    import gencycle
    assert "0: none" in help_of("tokenizer train", "--extra-ids")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)))
    for extra, out in ((0, tmp_path / "none"), (3, tmp_path / "three")):
        code = main(["tokenizer", "train", str(corpus), "--kind", "unigram", "--vocab-size", "60",
                     "--extra-ids", str(extra), "--no-progress", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
    vocab = lambda out: gencycle.load_tokenizer(out).backend.get_vocab()  # noqa: E731
    assert not [t for t in vocab(tmp_path / "none") if t.startswith("<extra_id_")]
    assert sorted(t for t in vocab(tmp_path / "three") if t.startswith("<extra_id_")) == \
        ["<extra_id_0>", "<extra_id_1>", "<extra_id_2>"]
    assert len(vocab(tmp_path / "none")) == len(vocab(tmp_path / "three")) == 60


def test_pretrain_temperature_0_samples_greedily(model):
    import gencycle
    from gencycle import LLM
    from gencycle.workflows.pretrain import SampleConfig, draw_samples
    assert "0: greedy" in help_of("pretrain", "--temperature")
    net, tokenizer = gencycle.load_model(model, device="cpu"), gencycle.load_tokenizer(model)
    prompts = ["the cat", "hello there"]
    drawn = draw_samples(net, tokenizer, prompts, SampleConfig(temperature=0, sample_tokens=6), seed=1)
    greedy = LLM(net, tokenizer).generate(prompts, max_new_tokens=6, do_sample=False)
    assert drawn == [p + g for p, g in zip(prompts, greedy)]
    other_seed = draw_samples(net, tokenizer, prompts, SampleConfig(temperature=0, sample_tokens=6), seed=2)
    assert other_seed == drawn  # no sampling: the seed changes nothing


def test_chunk_overlap_0_chunks_share_no_token(model):
    import gencycle
    from gencycle.integrate import Document, IndexConfig, chunk_document
    assert "(0: none)" in help_of("rag index", "--chunk-overlap")
    assert IndexConfig(chunk_overlap=0).chunk_overlap == 0
    text = " ".join(f"word{i}" for i in range(80))
    chunks = chunk_document(Document("a.txt", text), gencycle.load_tokenizer(model), chunk_tokens=10, chunk_overlap=0)
    assert len(chunks) > 3
    assert all(b.start_char >= a.end_char for a, b in zip(chunks, chunks[1:]))  # no shared text
    assert sum(c.tokens for c in chunks) == len(gencycle.load_tokenizer(model).encode(text))


def test_rrf_k_0_scores_one_over_rank():
    from gencycle.integrate import SearchConfig, reciprocal_rank_fusion
    assert "0: 1 / rank" in help_of("rag search", "--rrf-k")
    assert SearchConfig(rrf_k=0).rrf_k == 0
    fused = dict(reciprocal_rank_fusion([[7, 8, 9], [8, 7]], rrf_k=0))
    assert fused == pytest.approx({7: 1 + 1 / 2, 8: 1 / 2 + 1, 9: 1 / 3})


def test_rlhf_kl_coef_0_gives_the_score_alone_and_adaptive_kl_stays_at_0():
    import torch
    from gencycle.alignment.losses import AdaptiveKLController, kl_penalized_rewards
    from gencycle.alignment.ppo import PPOConfig
    assert "0: no penalty" in help_of("rlhf", "--kl-coef")
    logprobs, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-3.0, -0.1, -2.0]])  # far apart: a big KL
    mask = torch.tensor([[0, 1, 1]])
    rewards = kl_penalized_rewards(torch.tensor([0.7]), logprobs, ref, mask, kl_coef=0.0)
    assert rewards.tolist() == [[0.0, 0.0, pytest.approx(0.7)]]  # the score on the last token, no penalty
    assert kl_penalized_rewards(torch.tensor([0.7]), logprobs, ref, mask, kl_coef=0.2)[0, 1] != 0
    controller = PPOConfig(kl_coef=0.0, adaptive_kl=True).kl_controller()
    assert isinstance(controller, AdaptiveKLController)
    assert [controller.update(50.0, 8) for _ in range(3)] == [0.0, 0.0, 0.0]  # a KL far above target: still 0
