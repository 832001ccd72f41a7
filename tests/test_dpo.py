"""DPO on tiny random models built here: completion log-probabilities against transformers' logits,
the first step's loss is ln 2, training raises rewards/margins and rewards/accuracies (LoRA and full,
decoder and T5), the reference modes agree, pairs from the policy's own samples; bad input named."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gencycle
from gencycle.adapters import apply_lora, disable_adapters
from gencycle.alignment import dpo as dpo_module
from gencycle.alignment.dpo import DPOCollator, DPOStep, completion_logprobs, tokenize_preference_pairs
from gencycle.alignment.preferences import (
    PreferencePair, best_and_worst, load_preferences, sample_preference_pairs,
)
from gencycle.cli import main
from gencycle.workflows.dpo import dpo
from tiny_llm import save_tiny_chat_model

hf = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

LN2 = math.log(2)


def pairs_rows(n: int = 48) -> list[dict]:
    return [{"prompt": f"#Person1#: Is it raining? ({i})\n#Person2#:", "chosen": " Yes, with cheese.",
             "rejected": " No, it is sunny today."} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory, llama_folder):
    """A tiny random T5 using the tiny chat model's tokenizer (its pad id is 0, as T5's)."""
    folder = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = gencycle.load_tokenizer(llama_folder)
    torch.manual_seed(0)
    hf.T5ForConditionalGeneration(hf.T5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ log-probabilities
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_completion_logprobs_match_transformers(family, llama_folder, t5_folder, monkeypatch):
    """Sums over completion tokens only, from one batched forward, equal transformers' log_softmax of
    its own logits; the chunked head (forced to many chunks here) gives the naive gradient too."""
    monkeypatch.setattr(dpo_module, "_CHUNK_ELEMENTS", 3 * 400)  # 3 rows of the 400-token vocabulary per chunk
    folder = llama_folder if family == "llama" else t5_folder
    tokenizer = gencycle.load_tokenizer(folder)
    model = gencycle.load_model(folder, device="cpu")
    pairs = load_preferences(pairs_rows(3))
    arch = model.config.architecture
    examples = tokenize_preference_pairs(pairs, tokenizer, arch)
    collate = DPOCollator(0, 0 if arch == "encoder-decoder" else None)
    batch = collate(examples)
    logps, tokens = completion_logprobs(model, batch)
    ref = (hf.AutoModelForSeq2SeqLM if arch == "encoder-decoder" else hf.AutoModelForCausalLM).from_pretrained(folder)
    with torch.no_grad():
        if arch == "encoder-decoder":
            logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         decoder_input_ids=batch["decoder_input_ids"]).logits
            labels = batch["labels"]
        else:
            logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["input_ids"][:, 1:].masked_fill(batch["completion_mask"][:, 1:] == 0, -100)
        mask = labels != -100
        token = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        expected = (token * mask).sum(-1)
    assert logps.shape == (6,) and torch.equal(tokens, mask.sum(-1))
    assert (logps - expected).abs().max() < 1e-4
    # the gradient through the chunked, recomputed head equals the naive one
    logps.sum().backward()
    chunked = model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    if arch == "encoder-decoder":
        out = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=batch["decoder_input_ids"])
        naive = torch.log_softmax(out.logits.float(), -1)
    else:
        naive = torch.log_softmax(model(batch["input_ids"], batch["attention_mask"]).logits[:, :-1].float(), -1)
    (naive.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask).sum().backward()
    assert torch.allclose(chunked, model.embed_tokens.weight.grad, atol=1e-5)


def test_tokenized_pairs_share_the_prompt_and_end_in_eos(llama_folder):
    tokenizer = gencycle.load_tokenizer(llama_folder)
    eos = tokenizer.eos_token_id
    [example] = tokenize_preference_pairs([PreferencePair("Q:", " yes", " no no")], tokenizer)
    assert example.prompt_ids == tokenizer.encode("Q:")
    assert example.chosen_ids == tokenizer.encode(" yes", add_special_tokens=False) + [eos]
    assert example.rejected_ids[-1] == eos
    [empty] = tokenize_preference_pairs([PreferencePair("", "yes", "no")], tokenizer)
    assert len(empty.prompt_ids) == 1  # a start token predicts the first completion token
    with pytest.warns(UserWarning, match="longer than max_length=6"):
        [cut] = tokenize_preference_pairs([PreferencePair("a b c d e f g h", " yes", " no")], tokenizer,
                                          max_length=6)
    assert len(cut.prompt_ids) + max(len(cut.chosen_ids), len(cut.rejected_ids)) == 6


# ------------------------------------------------------------------ the step and training
def test_first_step_loss_is_ln2_and_lora_reference_is_the_base(llama_folder):
    tokenizer = gencycle.load_tokenizer(llama_folder)
    model = gencycle.load_model(llama_folder, device="cpu")
    batch = DPOCollator(0)(tokenize_preference_pairs(load_preferences(pairs_rows(4)), tokenizer))
    base_logits = model(batch["input_ids"], batch["attention_mask"]).logits
    apply_lora(model, rank=4, target_modules=["q_proj", "v_proj"])
    step = DPOStep(beta=0.1, reference="adapters-off")
    loss = step(model, batch)
    assert loss.item() == pytest.approx(LN2, abs=1e-6)
    stats = step.stats[-1][1]
    assert stats["rewards/chosen"] == stats["rewards/rejected"] == stats["rewards/margins"] == 0
    assert stats["rewards/accuracies"] == 0  # strict: chosen > rejected
    with torch.no_grad():  # adapters trained away from zero: the reference is still the base model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
        with disable_adapters(model):
            assert torch.equal(model(batch["input_ids"], batch["attention_mask"]).logits, base_logits)
        assert not torch.equal(model(batch["input_ids"], batch["attention_mask"]).logits, base_logits)
    assert DPOStep(reference="adapters-off")(model, batch).item() != pytest.approx(LN2, abs=1e-3)


def test_cli_lora_dpo_raises_margins_and_accuracies(llama_folder, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs_rows())
    out = tmp_path / "run"
    code = main(["dpo", str(llama_folder), "--data", str(data), "--out", str(out), "--max-steps", "12",
                 "--lr", "5e-3", "--batch-size", "8", "--lora-rank", "4", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    steps = read_metrics(out)
    keys = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"}
    assert len(steps) == 12 and all(keys <= set(s) for s in steps)
    assert steps[0]["loss"] == pytest.approx(LN2, abs=1e-5) and steps[0]["rewards/accuracies"] == 0
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] + 0.05
    assert steps[-1]["rewards/accuracies"] == 1.0 and steps[-1]["loss"] < LN2
    assert (out / "adapter" / "adapter_config.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "lora" and report["first_loss"] == pytest.approx(LN2, abs=1e-5)


@pytest.mark.parametrize("family,method", [("llama", "full"), ("t5", "lora")])
def test_dpo_trains_full_and_encoder_decoder(family, method, llama_folder, t5_folder, tmp_path):
    folder = llama_folder if family == "llama" else t5_folder
    result = dpo(str(folder), pairs_rows(), method=method, out=tmp_path / "run", max_steps=10,
                 lr=1e-3 if method == "full" else 1e-2, batch_size=8, eval_data=pairs_rows(8), progress=False)
    assert result.first_loss == pytest.approx(LN2, abs=1e-5)
    assert result.eval_before["loss"] == pytest.approx(LN2, abs=1e-5)
    assert result.eval_after["rewards/margins"] > 0.05 and result.eval_after["rewards/accuracies"] == 1.0
    assert (tmp_path / "run" / ("model" if method == "full" else "adapter")).is_dir()
    if method == "full":
        reloaded = gencycle.load_model(tmp_path / "run" / "model", device="cpu")
        assert torch.equal(reloaded.embed_tokens.weight, result.model.embed_tokens.weight)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_precomputed_and_live_references_train_alike(method, llama_folder):
    runs = {ref: dpo(str(llama_folder), pairs_rows(16), method=method, reference=ref, out=None, max_steps=4,
                     lr=1e-2 if method == "lora" else 1e-3, batch_size=4, progress=False).history
            for ref in ("precompute", "live")}
    for a, b in zip(runs["precompute"], runs["live"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def test_ipo_loss_and_label_smoothing_run(llama_folder):
    ipo = dpo(str(llama_folder), pairs_rows(16), loss_type="ipo", beta=0.5, out=None, max_steps=3, lr=1e-2,
              batch_size=8, progress=False)
    assert ipo.first_loss == pytest.approx((1 / (2 * 0.5)) ** 2, abs=1e-5)  # (h - 1 / (2 beta))^2 at h = 0
    smooth = dpo(str(llama_folder), pairs_rows(16), label_smoothing=0.1, out=None, max_steps=1, batch_size=8,
                 progress=False)
    assert smooth.first_loss == pytest.approx(LN2, abs=1e-5)


# ------------------------------------------------------------------ pairs from the policy's samples
def count_a(prompts, completions):
    """A synthetic reward: how often the letter 'a' occurs."""
    return [float(c.count("a")) for c in completions]


def test_pairs_from_the_policys_own_samples(llama_folder, tmp_path):
    tokenizer = gencycle.load_tokenizer(llama_folder)
    model = gencycle.load_model(llama_folder, device="cpu")
    prompts = [f"Summarize {i}:" for i in range(6)]
    pairs = sample_preference_pairs(model, tokenizer, prompts, count_a, samples_per_prompt=4, max_new_tokens=12,
                                    progress=False)
    assert pairs and all(p.chosen_score > p.rejected_score for p in pairs)
    assert all(p.chosen.count("a") == p.chosen_score for p in pairs)
    assert best_and_worst(["x", "y", "z"], [1.0, 3.0, 0.5]) == (1, 2)
    assert best_and_worst(["x", "y"], [2.0, 2.0]) is None and best_and_worst(["x", "x "], [1.0, 2.0]) is None
    result = dpo(str(llama_folder), prompts, reward_fn=count_a, samples_per_prompt=4, sample_max_new_tokens=12,
                 out=tmp_path / "run", max_steps=2, batch_size=4, progress=False)
    written = load_preferences(tmp_path / "run" / "pairs.jsonl")
    assert result.pairs == len(written) > 0 and written[0].chosen_score is not None
    assert result.first_loss == pytest.approx(LN2, abs=1e-5)


def test_cli_pairs_scored_by_a_reward_model_folder(llama_folder, tmp_path, capsys):
    from gencycle.workflows.reward import train_reward_model
    rows = [{"text": t, "label": int("a" in t)} for t in ("a cat", "a hat", "the dog", "its sun", "an ant", "fog")]
    train_reward_model(str(llama_folder), rows, out=tmp_path / "rm", max_steps=2, progress=False)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {i}:"} for i in range(4)])
    code = main(["dpo", str(llama_folder), "--data", str(prompts), "--reward", str(tmp_path / "rm" / "model"),
                 "--reward-label", "LABEL_1", "--samples-per-prompt", "3", "--sample-max-new-tokens", "8",
                 "--out", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert load_preferences(tmp_path / "run" / "pairs.jsonl")


# ------------------------------------------------------------------ bad input
def test_bad_preference_data_is_named(llama_folder, tmp_path, capsys):
    def run(rows, *extra, name="data.jsonl"):
        path = tmp_path / name
        path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows))
        code = main(["dpo", str(llama_folder), "--data", str(path), "--out", str(tmp_path / "o"), "--max-steps", "1",
                     "--no-progress", *extra])
        return code, capsys.readouterr().err

    code, err = run([])
    assert code == 2 and "the dataset is empty" in err
    code, err = run(pairs_rows(2) + [{"prompt": "p", "chosen": "same", "rejected": " same "}])
    assert code == 2 and "row 3: chosen and rejected are the same text" in err
    code, err = run([{"prompt": "p", "chosen": "yes"}])
    assert code == 2 and "row 1 has no 'rejected' field" in err
    code, err = run([{"prompt": "p", "chosen": "", "rejected": "no"}])
    assert code == 2 and "row 1 has an empty 'chosen' completion" in err
    code, err = run([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}])
    assert code == 2 and "row 1: margin must be a number" in err
    code, err = run([{"question": "x"}], "--reward", "count.py:count_a")
    assert code == 2 and "row 1 has no 'prompt' field" in err
    code, err = run(pairs_rows(2), "--beta", "0")
    assert code == 2 and "--beta" in err
    code, err = run(pairs_rows(2), "--reward", str(tmp_path), "--samples-per-prompt", "1")
    assert code == 2 and "argument --samples-per-prompt: must be an integer >= 2" in err


def test_dpo_refuses_an_encoder_and_a_missing_reference(tmp_path, llama_folder):
    encoder = gencycle.Transformer(gencycle.ModelConfig(family="bert", architecture="encoder", vocab_size=400,
                                                        hidden_size=16, num_layers=1, num_heads=2,
                                                        intermediate_size=32))
    tokenizer = gencycle.load_tokenizer(llama_folder)
    with pytest.raises(ValueError, match="not an encoder-only one"):
        dpo(encoder, pairs_rows(2), tokenizer=tokenizer, out=None, max_steps=1)
    with pytest.raises(ValueError, match="needs reference_model"):
        DPOStep(reference="model")
    model = gencycle.load_model(llama_folder, device="cpu")
    batch = DPOCollator(0)(tokenize_preference_pairs(load_preferences(pairs_rows(2)), tokenizer))
    with pytest.raises(ValueError, match="no ref_logps: call precompute_reference"):
        DPOStep(reference="precomputed")(model, batch)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        DPOStep(reference="adapters-off")(model, batch)
