"""The continuous-batching engine: a request's output is the same alone or in a busy batch, rows
join and leave at step boundaries, each row keeps its own settings, seed and stop strings.

The references are `generate` (through `LLM`) on each prompt alone, on a tiny random Llama with a
trained byte-level BPE tokenizer (tests/tiny_llm.py); its head is scaled up so that greedy choices
are well separated.
"""

import threading
import time

import pytest
import torch
from tiny_llm import save_tiny_chat_model

from gencycle import LLM
from gencycle.generation import GenerationConfig
from gencycle.generation.compiled import has_cpp_compiler
from gencycle.generation.engine import Engine, QueueFull
from gencycle.generation.processors import min_p, presence_frequency_penalty, process, token_counts
from gencycle.model import ModelConfig, Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Do you like pizza?", "Summarize the following conversation.", "Is it raining", "Where",
           "#Person1#: I lost my keys.\n#Person2#: Check your coat pocket.", "Can we meet at noon?",
           "What a good film!", "Turn left at the bank"]
WINDOW = 128


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    llm = LLM.load(save_tiny_chat_model(tmp_path_factory.mktemp("tiny-engine"), context=WINDOW), device="cpu")
    with torch.no_grad():
        llm.model.lm_head.weight.mul_(20)  # peaky: greedy picks are far apart
    return llm


@pytest.fixture(scope="module")
def engine(llm):
    with Engine(llm.model, llm.tokenizer, max_batch=6, max_queue=32) as engine:
        yield engine


def ids(llm, text):
    return llm.tokenizer.encode(text)


def alone(llm, prompt, **settings):
    """What generate gives for the prompt on its own."""
    return llm.generate(prompt, **settings)


def run_staggered(engine, llm, jobs, gap_steps=2):
    """Submit (prompt, config, extra) jobs from threads, each `gap_steps` decoding steps after the last,
    so that rows join a batch already running; returns their Completions."""
    results = [None] * len(jobs)

    def go(k, prompt, config, extra):
        results[k] = engine.complete(ids(llm, prompt), config, **extra)

    threads = []
    for k, (prompt, config, extra) in enumerate(jobs):
        start = engine.steps
        thread = threading.Thread(target=go, args=(k, prompt, config, extra))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 2
        while engine.steps < start + gap_steps and engine.running and time.monotonic() < deadline:
            time.sleep(0.0005)
    for thread in threads:
        thread.join(60)
    return results


def test_greedy_output_is_the_same_alone_and_in_a_busy_batch(engine, llm):
    config = llm.make_config(max_new_tokens=24)
    expected = [alone(llm, p, max_new_tokens=24) for p in PROMPTS]
    for p, want in zip(PROMPTS, expected):   # one at a time through the engine
        assert engine.complete(ids(llm, p), config)[0].text == want
    steps = engine.steps
    jobs = [(p, config, {}) for p in PROMPTS * 2]   # 16 requests, 6 rows: holes are refilled, the batch grows
    results = run_staggered(engine, llm, jobs, gap_steps=1)
    assert [r[0].text for r in results] == expected * 2
    assert engine.steps - steps < 16 * 24 / 2       # they really ran together
    assert engine.running == 0 and engine.waiting == 0


def test_each_row_keeps_its_own_sampling_settings_and_seed(engine, llm):
    settings = [dict(do_sample=True, seed=1, temperature=0.7),
                dict(do_sample=True, seed=2, top_k=5),
                dict(),                                                  # greedy
                dict(do_sample=True, seed=3, top_p=0.8, temperature=1.3),
                dict(do_sample=True, seed=4, min_p=0.2),
                dict(repetition_penalty=1.8),                            # greedy, penalized
                dict(do_sample=True, seed=5, presence_penalty=1.5, frequency_penalty=0.5, top_k=20, top_p=0.9),
                dict(no_repeat_ngram_size=2, min_new_tokens=10)]
    jobs, expected = [], []
    for p, extra in zip(PROMPTS, settings):
        jobs.append((p, llm.make_config(max_new_tokens=20, **extra), {}))
        expected.append(alone(llm, p, max_new_tokens=20, **extra))
    results = run_staggered(engine, llm, jobs, gap_steps=1)
    assert [r[0].text for r in results] == expected


def test_n_sequences_draw_with_seeds_s_plus_i(engine, llm):
    config = llm.make_config(max_new_tokens=16, do_sample=True, seed=11)
    out = engine.complete(ids(llm, PROMPTS[0]), config, n=3)
    assert [c.text for c in out] == [alone(llm, PROMPTS[0], max_new_tokens=16, do_sample=True, seed=11 + i)
                                     for i in range(3)]
    assert engine.complete(ids(llm, PROMPTS[0]), config, n=3)[1].text == out[1].text   # reproducible


def test_stop_strings_end_the_text_and_are_never_streamed(engine, llm):
    text = alone(llm, PROMPTS[1], max_new_tokens=24)
    stop = text[6:8]
    want = text[:text.find(stop)]
    config = llm.make_config(max_new_tokens=24, stop=[stop, "never appears"])
    events = list(engine.stream(ids(llm, PROMPTS[1]), config))
    assert "".join(e.text for e in events) == want and all(stop not in e.text for e in events)
    assert [e.finish_reason for e in events][-1] == "stop" and all(e.finish_reason is None for e in events[:-1])


def test_logprobs_are_the_models_and_their_tokens_join_to_the_text(engine, llm):
    prompt = ids(llm, PROMPTS[4])
    out = engine.complete(prompt, llm.make_config(max_new_tokens=12), logprobs=3)[0]
    assert "".join(t.text for t in out.tokens) == out.text
    assert all(t.logprob <= 0 and len(t.top) == 3 for t in out.tokens)
    with torch.no_grad():
        first = llm.model(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
    assert out.tokens[0].id == int(first.argmax()) == out.tokens[0].top[0][1]
    assert out.tokens[0].logprob == pytest.approx(float(first.max()), abs=1e-5)
    assert [t[2] for t in out.tokens[0].top] == pytest.approx(first.topk(3).values.tolist(), abs=1e-5)


def test_finish_reasons_and_usage(engine, llm):
    eos = llm.make_config().eos_token_ids[0]
    long = engine.complete(ids(llm, PROMPTS[2]), llm.make_config(max_new_tokens=5, eos_token_id=[]))[0]
    assert (long.finish_reason, long.completion_tokens, long.prompt_tokens) == ("length", 5, len(ids(llm, PROMPTS[2])))
    first = engine.complete(ids(llm, PROMPTS[2]), llm.make_config(max_new_tokens=1), logprobs=0)[0].tokens[0].id
    ended = engine.complete(ids(llm, PROMPTS[2]), llm.make_config(max_new_tokens=5, eos_token_id=[first, eos]))[0]
    assert (ended.text, ended.finish_reason, ended.completion_tokens) == ("", "stop", 1)  # EOS counted, not shown
    prompt = ids(llm, PROMPTS[4])
    full = engine.complete(prompt, llm.make_config(max_new_tokens=10_000, eos_token_id=[]))[0]
    assert (full.finish_reason, full.completion_tokens) == ("length", WINDOW - len(prompt))  # the window ends it


def test_a_cancelled_request_leaves_at_the_next_step(engine, llm):
    config = llm.make_config(max_new_tokens=100, min_new_tokens=100)
    events = engine.stream(ids(llm, PROMPTS[0]), config)
    first = next(events)
    assert first.finish_reason is None and engine.running == 1
    events.close()                                   # cancels
    deadline = time.monotonic() + 5
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.001)
    assert engine.running == 0
    got = []
    request = engine.submit(ids(llm, PROMPTS[0]), config, on_event=got.append)
    while not got:
        time.sleep(0.001)
    request.cancel()
    deadline = time.monotonic() + 5
    while got[-1].finish_reason is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert got[-1].finish_reason == "cancelled" and got[-1].completion_tokens < 100


def test_a_full_queue_is_refused_and_nothing_accepted_is_lost(llm):
    config = llm.make_config(max_new_tokens=60, min_new_tokens=60)
    with Engine(llm.model, llm.tokenizer, max_batch=1, max_queue=1) as engine:
        done = []
        first = engine.submit(ids(llm, PROMPTS[0]), config, on_event=done.append)
        second = engine.submit(ids(llm, PROMPTS[1]), config, on_event=done.append)
        with pytest.raises(QueueFull, match="waiting"):
            engine.submit(ids(llm, PROMPTS[2]), config, on_event=done.append)
        deadline = time.monotonic() + 30
        while sum(e.finish_reason is not None for e in done) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sorted(e.finish_reason for e in done if e.finish_reason) == ["length", "length"]
        assert first.cancelled is second.cancelled is False


def test_bad_input_is_refused_with_a_clear_error(engine, llm):
    with pytest.raises(ValueError, match="does not fit the model's context window of 128"):
        engine.submit(list(range(3, 3 + WINDOW)), llm.make_config(), on_event=print)
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.submit([], on_event=print)
    with pytest.raises(ValueError, match=r"integers in \[0, "):
        engine.submit([10**6], on_event=print)
    with pytest.raises(ValueError, match="beam search"):
        engine.submit([5], GenerationConfig(num_beams=2), on_event=print)
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 6\]"):
        engine.submit([5], n=7, on_event=print)
    with pytest.raises(ValueError, match="logprobs"):
        engine.submit([5], logprobs=21, on_event=print)
    with pytest.raises(ValueError, match="decoder-only"):
        Engine(Transformer(ModelConfig(family="bert", architecture="encoder", vocab_size=32, hidden_size=16,
                                       num_layers=1, num_heads=2, intermediate_size=32)), llm.tokenizer)


def test_call_runs_on_the_scheduler_thread_and_a_failing_callback_does_not_stop_it(engine, llm):
    assert engine.call(lambda: threading.current_thread().name).result(10) == "gencycle-engine"

    def broken(event):
        raise RuntimeError("a client bug")
    engine.submit(ids(llm, PROMPTS[3]), llm.make_config(max_new_tokens=3), on_event=broken)
    assert engine.complete(ids(llm, PROMPTS[3]), llm.make_config(max_new_tokens=3))[0].finish_reason in ("stop", "length")


def test_openai_penalties_and_min_p_processors():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    generated = torch.tensor([[1, 1, 3]])
    counts = token_counts(generated, 4)
    assert counts.tolist() == [[0, 2, 0, 1]]
    out = presence_frequency_penalty(scores, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == [[2.0, 1.0 - 0.5 - 0.5, 0.0, -1.0 - 0.5 - 0.25]]
    ids = torch.tensor([[0, 2, 1, 1, 3]])   # 2 prompt tokens, then the generated ones
    config = GenerationConfig(presence_penalty=0.5, frequency_penalty=0.25)
    assert process(scores, ids, config, 3, []).tolist() == out.tolist()
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = min_p(probs.log(), 0.2).isfinite()
    assert kept.tolist() == [[True, True, True, False]]          # 0.05 < 0.2 * 0.5
    sampled = process(probs.log(), ids, GenerationConfig(do_sample=True, min_p=0.4), 0, []).isfinite()
    assert sampled.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match=r"min_p must be a number in \[0, 1\]"):
        GenerationConfig(min_p=1.5)
    with pytest.raises(ValueError, match="presence_penalty must be a number"):
        GenerationConfig(presence_penalty=float("nan"))


@pytest.mark.slow
@pytest.mark.skipif(not has_cpp_compiler(), reason="compiled decoding needs a C++ compiler")
def test_compiled_steps_with_rows_joining_and_leaving(llm, tmp_path):
    model = LLM.load(save_tiny_chat_model(tmp_path / "m", context=WINDOW), device="cpu")
    with torch.no_grad():
        model.model.lm_head.weight.mul_(20)
    config = model.make_config(max_new_tokens=24)
    expected = [model.generate(p, max_new_tokens=24) for p in PROMPTS]
    with Engine(model.model, model.tokenizer, max_batch=4, compiled=True) as engine:
        engine.warm_up(slots=(64,), keep_faster=False)        # compiled steps at every row count
        assert engine.eager_rows == set() and engine.step_choice == {}
        results = run_staggered(engine, model, [(p, config, {}) for p in PROMPTS], gap_steps=1)
        assert [r[0].text for r in results] == expected
        engine.warm_up(slots=(64,))                            # built already: now timed against eager steps
        assert set(engine.step_choice) == set(engine.row_buckets)
        for rows, (choice, compiled, eager) in engine.step_choice.items():
            assert compiled > 0 and eager > 0 and (choice == "eager") == (eager < compiled)
            assert (rows in engine.eager_rows) == (choice == "eager")
        results = run_staggered(engine, model, [(p, config, {}) for p in PROMPTS], gap_steps=1)
        assert [r[0].text for r in results] == expected      # whichever step each row count uses
        long = engine.complete(ids(model, PROMPTS[4]), model.make_config(max_new_tokens=90, eos_token_id=[]))[0]
        assert long.completion_tokens == 90   # outgrew 64 slots: moved to a bigger cache
