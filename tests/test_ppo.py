"""PPO with a KL penalty on a tiny random decoder and a tiny random T5: rollouts' log-probabilities against a
naive per-row computation, rewards rise with KL bounded and the ratio near 1, only the adapters and the
value head change with LoRA, full training keeps a frozen reference, resume continues exactly, the
diagnostics, the rlhf workflow and CLI, and every bad input's message."""

from __future__ import annotations

import json
import random
import statistics
import warnings

import pytest
import torch

from ddp_worker import char_tokenizer, tiny_decoder, tiny_t5
from gencycle.adapters import apply_lora, disable_adapters
from gencycle.alignment.ppo import PPOConfig, PPOTrainer, PPOWarning, Prompt, frozen_copy
from gencycle.alignment.rollout import pad_prompts, response_mask, sample, score_tokens
from gencycle.errors import UserError
from gencycle.generation import GenerationConfig
from gencycle.model.heads import ValueHead
from gencycle.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS = "bcdefghij"  # prompts never hold the rewarded letter
METRICS = {"reward/mean", "reward/std", "kl/mean", "kl/coef", "objective/rlhf_reward", "entropy", "response_length",
           "policy/clipfrac", "policy/approx_kl", "ratio/mean", "value/loss", "time/rollout", "time/update",
           "time/score", "loss", "lr", "step"}


def share_of_a(prompts, completions):
    """A synthetic reward: the share of the letter 'a' in the completion."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def make_prompts(n: int = 64, seed: int = 0) -> list[Prompt]:
    tokenizer, rng = char_tokenizer(), random.Random(seed)
    texts = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 5))) + ">" for _ in range(n)]
    return [Prompt(t, tokenizer.encode(t, add_special_tokens=False)) for t in texts]


def lora_policy(make, seed: int = 0):
    model = make(seed)
    apply_lora(model, rank=8, alpha=16, target_modules=["attention", "mlp", "lm_head"])
    return ValueHead(model)


def trainer_for(policy, steps=30, lr=5e-3, batch=32, reference=None, out=None, reward=share_of_a, seed=0, **ppo):
    config = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, schedule="constant", progress=False, seed=seed,
                         out_dir=str(out) if out else None, **ppo.pop("train", {}))
    settings = dict(max_new_tokens=8, ppo_epochs=4, mini_batch_size=8, kl_coef=0.1, adaptive_kl=False)
    return PPOTrainer(policy, config, PPOConfig(**{**settings, **ppo}), make_prompts(), reward, char_tokenizer(),
                      reference=reference)


# ------------------------------------------------------------------ rollouts
@pytest.mark.parametrize("make", [tiny_decoder, tiny_t5], ids=["decoder", "t5"])
def test_rollout_logprobs_values_equal_a_naive_per_row_forward(make):
    """One batched forward (left-padded prompts for the decoder, right-padded for T5, responses cut at EOS)
    gives each response token's log-probability and value as an unpadded forward of that row alone."""
    policy = lora_policy(make)
    with torch.no_grad():  # make the adapters non-zero, so adapters on and off differ
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    lm = policy.backbone.eval()
    prompts = [p.ids for p in make_prompts(6, seed=3)]
    batch = sample(lm, prompts, GenerationConfig(do_sample=True, max_new_tokens=6, seed=0))
    assert batch.response_mask[:, 0].all() and batch.response_length <= 6
    with torch.no_grad():
        out = score_tokens(lm, batch, policy.score, temperature=0.7, entropy=True)
        with disable_adapters(lm):
            ref = score_tokens(lm, batch)
    for row, prompt in enumerate(prompts):
        response = batch.responses()[row]
        n = len(response)
        for use_adapters, got, temperature in ((True, out.logprobs, 0.7), (False, ref.logprobs, 1.0)):
            with torch.no_grad(), (disable_adapters(lm) if not use_adapters else torch.enable_grad()):
                if make is tiny_t5:
                    o = lm(torch.tensor([prompt]), decoder_input_ids=torch.tensor([[0] + response[:-1]]))
                    logits, hidden = o.logits[0], o.hidden_states[0]
                else:
                    o = lm(torch.tensor([prompt + response]))
                    logits, hidden = o.logits[0, len(prompt) - 1:-1], o.hidden_states[0, len(prompt) - 1:-1]
                logp = torch.log_softmax(logits / temperature, -1)[torch.arange(n), torch.tensor(response)]
            torch.testing.assert_close(got[row, :n], logp, atol=1e-5, rtol=1e-5)
            assert (got[row, n:] == 0).all()
            if use_adapters:
                torch.testing.assert_close(out.values[row, :n], policy.score(hidden).squeeze(-1), atol=1e-5, rtol=1e-5)
                p = torch.softmax(logits / 0.7, -1)
                torch.testing.assert_close(out.entropy[row, :n], -(p * p.log()).sum(-1), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out.logprobs, ref.logprobs)  # the reference is the model with its adapters off


def test_response_mask_ends_at_the_first_eos_and_prompts_pad_on_either_side():
    ids = torch.tensor([[5, 6, 1, 0, 0], [1, 0, 0, 0, 0], [7, 7, 7, 7, 7]])
    assert response_mask(ids, [1]).tolist() == [[True, True, True, False, False], [True] + [False] * 4, [True] * 5]
    with pytest.raises(UserError, match="responses are empty"):
        response_mask(ids[:, :0], [1])
    left, mask = pad_prompts([[3, 4], [5]], 0, "left")
    assert left.tolist() == [[3, 4], [0, 5]] and mask.tolist() == [[1, 1], [0, 1]]
    right, _ = pad_prompts([[3, 4], [5]], 0, "right")
    assert right.tolist() == [[3, 4], [5, 0]]
    with pytest.raises(UserError, match=r"at least one token \(empty rows: \[1\]\)"):
        pad_prompts([[3], []], 0, "left")


# ------------------------------------------------------------------ learning
@pytest.mark.parametrize("make", [tiny_decoder, tiny_t5], ids=["decoder", "t5"])
def test_ppo_raises_the_reward_with_kl_bounded_and_only_adapters_and_value_head_change(make, tmp_path):
    policy = lora_policy(make)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = trainer_for(policy, lr=5e-3, kl_coef=0.1, ppo_epochs=4, mini_batch_size=16, out=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PPOWarning)
        history = trainer.train()
    # no sign of trouble but the one this reward asks for ("aaaa" has few distinct tokens)
    assert set(trainer.diagnostics["warned"]) <= {"collapse"}
    rewards = [h["reward/mean"] for h in history]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert last > first + 0.2 and last > 2 * first, rewards
    # bounded: kl_coef x KL stays below the largest score (1), about the optimum of score - kl_coef x KL
    assert max(h["kl/mean"] for h in history) < 12 and history[-1]["kl/mean"] > 0.5
    assert all(0.8 < h["ratio/mean"] < 1.25 for h in history)
    assert history[0]["kl/mean"] == pytest.approx(0, abs=1e-6)  # policy = reference at the first rollout
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert changed == trainable and all(".lora_" in n or n == "score.weight" for n in changed)
    # the diagnostics written to the run folder
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and METRICS <= set(lines[0]) and [r["step"] for r in lines] == list(range(1, 31))
    assert lines[-1]["objective/rlhf_reward"] == pytest.approx(
        lines[-1]["reward/mean"] - lines[-1]["kl/coef"] * lines[-1]["kl/mean"], abs=0.05)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 10, 20, 30} and {"prompt", "response", "reward"} <= set(samples[0])
    assert (tmp_path / "reward_kl.png").stat().st_size > 5000


def test_full_training_keeps_a_frozen_reference_sharing_nothing(tmp_path):
    model = tiny_decoder()
    reference = frozen_copy(model)
    ref_before = {n: p.clone() for n, p in reference.state_dict().items()}
    policy = ValueHead(model)
    trainer = trainer_for(policy, steps=6, lr=1e-3, reference=reference)
    history = trainer.train()
    assert all(torch.equal(p, ref_before[n]) for n, p in reference.state_dict().items())
    assert not any(p.requires_grad for p in reference.parameters())
    assert history[0]["kl/mean"] == pytest.approx(0, abs=1e-6) and history[-1]["kl/mean"] != 0
    assert all(not torch.equal(p, reference.get_parameter(n)) for n, p in model.named_parameters()
               if n.endswith("q_proj.weight"))
    with pytest.raises(UserError, match="shares .* parameter tensors with the policy; use frozen_copy"):
        trainer_for(ValueHead(model), reference=model)


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    straight = trainer_for(lora_policy(tiny_decoder), steps=4, batch=8, out=tmp_path / "a",
                           adaptive_kl=True, kl_horizon=100, train={"checkpoint_every": 2})
    straight.train()
    resumed = trainer_for(lora_policy(tiny_decoder), steps=4, batch=8, out=tmp_path / "b",
                          adaptive_kl=True, kl_horizon=100)
    resumed.train(resume=tmp_path / "a" / "checkpoints" / "step-00000002")
    untimed = lambda h: {k: v for k, v in h.items() if not k.startswith("time") and k != "tokens_per_s"}  # noqa
    assert [untimed(h) for h in resumed.history] == [untimed(h) for h in straight.history]
    assert resumed.history[2]["kl/coef"] != resumed.history[0]["kl/coef"]  # the adaptive coefficient moved and was restored
    for (name, a), b in zip(straight.module.named_parameters(), resumed.module.parameters()):
        assert torch.equal(a, b), name
    metrics = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4]


def test_resume_in_the_run_folder_logs_each_step_once(tmp_path):
    """A run killed after its checkpoint (step 2) and its step 3, resumed in the same folder and killed
    again during step 4: metrics.jsonl and samples.jsonl hold steps 1-3 once each, step 3 from the
    resumed run (as the straight run wrote it), not the killed run's lines and then the new ones."""
    first = trainer_for(lora_policy(tiny_decoder), steps=3, batch=8, out=tmp_path, sample_every=1,
                        samples_per_step=2, train={"checkpoint_every": 2})
    first.train()
    straight = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in straight] == [1, 2, 3]

    calls = []

    def killed_in_step_4(prompts, completions):  # the resumed run's second step is step 4
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return share_of_a(prompts, completions)

    resumed = trainer_for(lora_policy(tiny_decoder), steps=4, batch=8, out=tmp_path, sample_every=1,
                          samples_per_step=2, reward=killed_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        resumed.train(resume=True)
    assert resumed.restored_steps == 2  # the run's time and summary count the steps it trained, not these
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2, 3]
    untimed = lambda h: {k: v for k, v in h.items() if not k.startswith("time") and k != "tokens_per_s"}  # noqa
    assert [untimed(r) for r in metrics] == [untimed(r) for r in straight]
    samples = [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == [1, 1, 2, 2, 3, 3]


# ------------------------------------------------------------------ diagnostics
def test_each_diagnostic_warns_once_in_clear_words():
    trainer = trainer_for(lora_policy(tiny_decoder), steps=1, kl_warning=5.0)
    healthy = {"step": 1, "kl/mean": 0.5, "ratio/min": 0.9, "ratio/max": 1.1, "distinct_tokens": 6.0}
    assert trainer.check(healthy) == []
    cases = [({"kl/mean": -1.5}, "negative_kl", r"mean KL to the reference is -1.50 nats per response, below -1"),
             ({"kl/mean": 7.0}, "high_kl", r"above --kl-warning 5.*reward hacking"),
             ({"ratio/min": 0.3}, "ratio", r"mean probability ratio .* was 0.300 .. 1.100, outside \[0.5, 2.0\]"),
             ({"distinct_tokens": 2.5}, "collapse", r"responses are collapsing: 2.5 distinct tokens per response "
                                                   r"against 6.0 at the first step")]
    for change, kind, message in cases:
        with pytest.warns(PPOWarning, match=message):
            assert trainer.check({**healthy, **change, "step": 2}) == [kind]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert trainer.check({**healthy, **change, "step": 3}) == []  # once only
    assert trainer.diagnostics["warned"] == ["negative_kl", "high_kl", "ratio", "collapse"]


def test_a_collapsing_policy_is_caught():
    """Left alone (no KL penalty, a high learning rate), the policy finds 'aaaa...' and the diagnostics say so."""
    trainer = trainer_for(lora_policy(tiny_decoder), steps=30, lr=2e-2, kl_coef=0.0, kl_warning=8.0)
    with pytest.warns(PPOWarning) as caught:
        history = trainer.train()
    kinds = set(trainer.diagnostics["warned"])
    assert history[-1]["reward/mean"] > 0.8 and {"collapse", "high_kl"} <= kinds, [str(w.message) for w in caught]
    assert any("warnings" in h for h in history)


# ------------------------------------------------------------------ bad input
def test_bad_ppo_settings_are_named():
    from gencycle.errors import OptionError
    for settings, message in [({"kl_coef": -0.1}, r"kl_coef must be >= 0 .*, got -0.1"),
                              ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1: a response of 0 "
                                                      r"tokens has nothing to reward, got 0"),
                              ({"min_new_tokens": 9, "max_new_tokens": 8}, r"min_new_tokens must be an integer in "
                                                                          r"\[0, max_new_tokens=8\]"),
                              ({"lam": 1.5}, r"lam must be in \[0, 1\]"),
                              ({"kl_estimator": "k2"}, r"unknown kl_estimator 'k2'; use k1 or k3"),
                              ({"temperature": 0}, r"temperature must be > 0"),
                              ({"mini_batch_size": 0}, r"mini_batch_size must be an integer >= 1")]:
        with pytest.raises(OptionError, match=message):
            PPOConfig(**settings)


def test_bad_policies_and_rewards_are_named():
    with pytest.raises(UserError, match="the policy has no LoRA adapters.*pass reference=frozen_copy"):
        trainer_for(ValueHead(tiny_decoder()))
    with pytest.raises(UserError, match=r"the PPO policy is a ValueHead\(model\)"):
        PPOTrainer(tiny_decoder(), TrainConfig(), PPOConfig(), make_prompts(), share_of_a, char_tokenizer())
    with pytest.raises(UserError, match="no prompts to train on"):
        PPOTrainer(lora_policy(tiny_decoder), TrainConfig(), PPOConfig(), [], share_of_a, char_tokenizer())
    bad = trainer_for(lora_policy(tiny_decoder), steps=1, reward=lambda p, c: [1.0])
    with pytest.raises(UserError, match=r"returned 1 values for 32 completions"):
        bad.train()


# ------------------------------------------------------------------ the workflow and the CLI
def test_rlhf_workflow_full_training_of_a_t5_measures_before_and_after(tmp_path):
    from gencycle.workflows.rlhf import rlhf
    prompts = [p.text for p in make_prompts(48)]
    result = rlhf(tiny_t5(), prompts, share_of_a, tokenizer=char_tokenizer(), method="full", out=tmp_path,
                  max_steps=3, batch_size=8, lr=1e-3, max_new_tokens=6, eval_prompts=prompts[:16], eval_examples=12,
                  judges=("profanity", share_of_a), bootstrap_samples=200, progress=False)
    assert result.method == "full" and result.parameters.trainable == result.parameters.total
    table = result.table
    assert result.eval_prompts == 12 and set(table) == {"judges", "reward", "kl", "perplexity"}
    assert table["kl"]["before"]["mean"] == pytest.approx(0, abs=1e-5)  # the policy is the reference before PPO
    judge = table["judges"]["share_of_a"]
    assert judge["before"]["n"] == 12 and judge["before"]["mean_ci"][0] <= judge["before"]["mean"] <= \
        judge["before"]["mean_ci"][1]
    assert table["reward"]["before"]["mean"] == pytest.approx(judge["before"]["mean"])  # the same function
    assert 1 < table["perplexity"]["before"]["value"] < 30
    assert "perplexity of the replies under the reference" in result.summary()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"] == 3 and report["table"]["kl"]["after"]["n"] == 12
    assert (tmp_path / "model" / "config.json").exists() and (tmp_path / "value_head.safetensors").exists()
    assert len((tmp_path / "eval_samples.jsonl").read_text().splitlines()) == 12


REWARD_FILE = "def brevity(prompts, completions):\n    return [-len(c) / 10 for c in completions]\n"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from tiny_llm import save_tiny_chat_model
    return save_tiny_chat_model(tmp_path_factory.mktemp("chat"))


def test_cli_rlhf_on_a_chat_model_with_a_reward_function_file(chat_model, tmp_path, capsys):
    from gencycle.cli import main
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    folder = tmp_path / "prompts"
    folder.mkdir()
    for split, n in (("train", 16), ("test", 6)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n"
                                                       for i in range(n)))
    out = tmp_path / "run"
    code = main(["rlhf", str(chat_model), "--prompts", str(folder), "--reward", f"{tmp_path}/rewards.py:brevity",
                 "--chat-template", "--max-steps", "2", "--batch-size", "4", "--max-new-tokens", "5",
                 "--judges", "profanity", "--bootstrap-samples", "200", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "alt-profanity-check P(offensive): share > 0.5" in printed and f"wrote {out}" in printed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "reward_kl.png").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["eval_prompts"] == 6 and "brevity" in report["reward_name"]


def test_cli_rlhf_names_bad_prompts_files(chat_model, tmp_path, capsys):
    from gencycle.cli import main
    empty, missing = tmp_path / "empty.jsonl", tmp_path / "missing.jsonl"
    empty.write_text("")
    missing.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"text": "no prompt here"}) + "\n")
    base = ["rlhf", str(chat_model), "--reward", "profanity", "--max-steps", "1", "--no-progress",
            "--out", str(tmp_path / "run")]
    for path, message in [(empty, "empty.jsonl: no prompts (the file is empty)"),
                          (missing, "missing.jsonl: row 2 has no 'prompt' field (its fields: text); name the "
                                    "prompt's field with --prompt-field")]:
        assert main(base + ["--prompts", str(path)]) == 2
        assert message in capsys.readouterr().err
    assert main(base + ["--prompts", str(missing), "--kl-coef", "-1"]) == 2
    assert "argument --kl-coef: must be >= 0" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "fine"}) + "\n")
    assert main(base + ["--prompts", str(good), "--reward", "nowhere_module:fn"]) == 2
    assert "cannot import module 'nowhere_module'" in capsys.readouterr().err


def test_a_resumed_runs_summary_counts_the_steps_it_trained():
    from gencycle.training.report import ParameterCount
    from gencycle.workflows.rlhf import RlhfResult

    history = [{"step": s, "reward/mean": 1.0, "kl/mean": 0.0, "kl/coef": 0.05} for s in range(1, 31)]
    result = RlhfResult("lora", None, ParameterCount(10, 100), 60.0, 2**20, "rss", history, restored_steps=10)
    assert "60.0 s for 20 PPO steps (steps 11-30; 1-10 restored from a checkpoint)" in result.summary()
    assert "60.0 s for 30 PPO steps, peak" in RlhfResult("lora", None, ParameterCount(10, 100), 60.0, 2**20, "rss",
                                                          history).summary()
