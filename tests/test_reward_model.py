"""Reward models: `gencycle reward train` on tiny random backbones built here (Llama, BERT, T5 encoder),
from labelled text (cross-entropy) and from preference pairs (Bradley-Terry); the folder loads in
transformers with equal logits; the Bradley-Terry loss against its formula; bad input named."""

from __future__ import annotations

import json
import math
import random
import warnings

import pytest
import torch

import gencycle
from gencycle.alignment.reward_model import (
    RewardModel, bradley_terry_loss, load_for_scoring, load_reward_model, same_vocabulary,
)
from gencycle.cli import main
from gencycle.training.tokenizer_training import train_tokenizer_from_texts
from gencycle.workflows.reward import train_reward_model
from tiny_llm import save_tiny_chat_model

hf = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

NICE = "pizza cheese sunny film meet noon friends lovely".split()
MEAN = "lost keys raining sad station late broken awful".split()
TOL = 1e-4


def labelled_rows(n: int = 160, seed: int = 0) -> list[dict]:
    """Texts of three words, all nice ("nice") or all mean ("mean"): learnable by a tiny model."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.sample(MEAN if i % 2 else NICE, 3)), "label": "mean" if i % 2 else "nice"}
            for i in range(n)]


def preference_rows(n: int = 96, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": "Say something: ", "chosen": " ".join(rng.sample(NICE, 3)),
             "rejected": " ".join(rng.sample(MEAN, 3))} for _ in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-llama"))


def _corpus() -> list[str]:
    return [" ".join(random.Random(i).sample(NICE + MEAN, 4)) + " say something" for i in range(200)]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = train_tokenizer_from_texts(_corpus(), "wordpiece", 110, folder, show_progress=False)
    torch.manual_seed(0)
    hf.BertModel(hf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                               pad_token_id=0)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = train_tokenizer_from_texts(_corpus(), "unigram", 40, folder, extra_ids=0, show_progress=False)
    torch.manual_seed(0)
    hf.T5ForConditionalGeneration(hf.T5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)).save_pretrained(folder)
    return folder


def hf_logits(folder, texts):
    """transformers' own tokenizer and AutoModelForSequenceClassification on the folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = hf.AutoTokenizer.from_pretrained(folder)
        model = hf.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits, model.config


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


TEXTS = ["pizza cheese noon", "lost keys", "sad raining station late friends", "lovely"]


@pytest.mark.parametrize("backbone", ["llama", "bert"])
def test_cli_trained_reward_model_loads_in_transformers_with_equal_logits(backbone, llama_folder, bert_folder,
                                                                          tmp_path, capsys):
    folder = llama_folder if backbone == "llama" else bert_folder
    data = write_jsonl(tmp_path / "train.jsonl", labelled_rows())
    test = write_jsonl(tmp_path / "test.jsonl", labelled_rows(40, seed=1))
    out = tmp_path / "rm"
    code = main(["reward", "train", str(folder), "--data", str(data), "--test-data", str(test), "--out", str(out),
                 "--max-steps", "30", "--lr", "3e-3", "--batch-size", "16", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == ["mean", "nice"] and report["kind"] == "classification"
    assert report["test_after"]["accuracy"] >= 0.9 > report["test_before"]["accuracy"]
    assert report["test_after"]["loss"] < report["test_before"]["loss"]
    steps = read_metrics(out)
    assert len(steps) == 30 and all("accuracy" in s for s in steps)
    rm = load_reward_model(out / "model", device="cpu")
    assert rm.labels == ["mean", "nice"]
    ours = rm.score(TEXTS)
    theirs, config = hf_logits(out / "model", TEXTS)
    assert config.id2label == {0: "mean", 1: "nice"}
    assert ours.shape == (4, 2) and (ours - theirs).abs().max() < TOL
    assert ours[0].argmax() == 1 and ours[1].argmax() == 0  # nice, mean


def test_preference_pairs_train_a_scalar_bradley_terry_reward_model(bert_folder, tmp_path):
    result = train_reward_model(str(bert_folder), preference_rows(), out=tmp_path / "rm", test_data=preference_rows(32, 1),
                                max_steps=30, lr=3e-3, batch_size=16, center_rewards=0.01, progress=False)
    assert result.kind == "preference" and result.labels == ["reward"]
    assert result.test_after["accuracy"] >= 0.95 and result.test_after["margin"] > result.test_before["margin"] + 1
    assert {"accuracy", "margin", "reward/chosen", "reward/rejected"} <= set(result.history[-1])
    rewards = result.reward_model.score(TEXTS)
    assert rewards.shape == (4, 1) and rewards[0, 0] > rewards[1, 0]
    theirs, config = hf_logits(tmp_path / "rm" / "model", TEXTS)
    assert config.num_labels == 1 and (rewards - theirs).abs().max() < TOL


@pytest.mark.parametrize("backbone,pooling", [("bert", "mean"), ("t5", "auto")])
def test_mean_pooled_encoders_train_and_load_back(backbone, pooling, bert_folder, t5_folder, tmp_path):
    """MiniLM-style mean pooling and a T5 encoder: gencycle's own layout, loaded back with equal scores."""
    folder = bert_folder if backbone == "bert" else t5_folder
    result = train_reward_model(str(folder), labelled_rows(), out=tmp_path / "rm", test_data=labelled_rows(40, 1),
                                pooling=pooling, max_steps=30, lr=3e-3, batch_size=16, progress=False)
    assert result.test_after["accuracy"] >= 0.9
    config = json.loads((tmp_path / "rm" / "model" / "config.json").read_text())
    assert config["gencycle_classifier"]["pooling"] == "mean"
    back = load_reward_model(tmp_path / "rm" / "model", device="cpu")
    if backbone == "t5":
        assert back.model.backbone.config.architecture == "encoder"
    assert torch.allclose(back.score(TEXTS), result.reward_model.score(TEXTS), atol=1e-6)


def test_lora_reward_model_is_merged_before_saving(llama_folder, tmp_path):
    result = train_reward_model(str(llama_folder), labelled_rows(), method="lora", lora_rank=4, out=tmp_path / "rm",
                                max_steps=20, lr=1e-2, batch_size=16, progress=False)
    assert 0 < result.parameters.trainable < result.parameters.total
    from safetensors import safe_open
    with safe_open(tmp_path / "rm" / "model" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k] and "score.weight" in f.keys()
    back = load_reward_model(tmp_path / "rm" / "model", device="cpu")
    assert torch.allclose(back.score(TEXTS), result.reward_model.score(TEXTS), atol=1e-5)


def test_a_reward_model_folder_trains_further_with_its_head(llama_folder, tmp_path):
    first = train_reward_model(str(llama_folder), labelled_rows(), out=tmp_path / "a", max_steps=5, lr=3e-3,
                               batch_size=16, progress=False)
    second = train_reward_model(str(tmp_path / "a" / "model"), labelled_rows(seed=2), out=tmp_path / "b",
                                max_steps=5, lr=3e-3, batch_size=16, test_data=labelled_rows(40, 1), progress=False)
    assert second.labels == first.labels
    assert second.test_before["loss"] < math.log(2)  # it started from the trained head, not a fresh one


def test_bradley_terry_loss_equals_its_formula():
    chosen, rejected, margin = [1.5, -0.5, 0.2], [0.5, 0.5, 0.4], [0.0, 1.0, 0.3]
    logits = torch.tensor(chosen + rejected)[:, None]
    loss, stats = bradley_terry_loss(logits, torch.tensor(margin), center_rewards=0.01)

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))
    expected = -sum(log_sigmoid(c - r - m) for c, r, m in zip(chosen, rejected, margin)) / 3
    expected += 0.01 * sum((c + r) ** 2 for c, r in zip(chosen, rejected)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["accuracy"] == pytest.approx(1 / 3) and stats["margin"] == pytest.approx((1.0 - 1.0 - 0.2) / 3)
    with pytest.raises(ValueError, match="one-label"):
        bradley_terry_loss(torch.zeros(4, 2))


def test_reward_score_cli_and_the_scoring_entry_point(llama_folder, tmp_path, capsys):
    train_reward_model(str(llama_folder), labelled_rows(), out=tmp_path / "rm", max_steps=20, lr=3e-3,
                       batch_size=16, progress=False)
    folder = str(tmp_path / "rm" / "model")
    assert main(["reward", "score", folder, "pizza cheese", "lost keys", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["pizza cheese", "lost keys"]
    assert rows[0]["probs"]["nice"] > 0.5 > rows[1]["probs"]["nice"]
    assert main(["reward", "score", folder, "pizza", "--label", "nice"]) == 0
    assert capsys.readouterr().out.startswith("nice ")
    model, tokenizer, labels = load_for_scoring(folder, device="cpu")
    assert labels == ["mean", "nice"] and model.num_labels == 2 and tokenizer.pad_token_id is not None


# ------------------------------------------------------------------ bad input
def test_bad_reward_data_is_named(llama_folder, tmp_path, capsys):
    def run(rows, *extra):
        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        code = main(["reward", "train", str(llama_folder), "--data", str(path), "--out", str(tmp_path / "o"),
                     "--max-steps", "1", "--no-progress", *extra])
        return code, capsys.readouterr().err

    code, err = run([])
    assert code == 2 and "the dataset is empty" in err
    code, err = run([{"text": "a b", "label": 0}, {"text": "c d"}])
    assert code == 2 and "row 2 has no 'label' field" in err
    code, err = run([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], "--labels", "nice", "mean")
    assert code == 2 and "row 1: unknown label 'x'" in err
    code, err = run([{"text": "a", "label": 1}, {"text": "b", "label": 1}])
    assert code == 2 and "at least two labels" in err
    code, err = run([{"prompt": "p", "chosen": "same", "rejected": "same"}])
    assert code == 2 and "row 1: chosen and rejected are the same text" in err
    code, err = run([{"prompt": "p", "chosen": "yes"}])
    assert code == 2 and "row 1 has no 'rejected' field" in err
    code, err = run([{"question": "?"}])
    assert code == 2 and "text/label rows" in err


def test_a_folder_without_a_classification_head_or_tokenizer_is_refused(llama_folder, tmp_path, capsys):
    assert main(["reward", "score", str(llama_folder), "hi"]) == 2
    assert "has no classification head" in capsys.readouterr().err
    result = train_reward_model(str(llama_folder), labelled_rows(), out=None, max_steps=1, progress=False)
    from gencycle.checkpoints.classification import save_classifier
    save_classifier(result.reward_model.model, tmp_path / "bare", pad_token_id=0)
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_reward_model(tmp_path / "bare")


def test_ids_never_cross_vocabularies(llama_folder, bert_folder):
    rm = train_reward_model(str(bert_folder), labelled_rows(), out=None, max_steps=1, progress=False).reward_model
    policy_tokenizer = gencycle.load_tokenizer(llama_folder)
    assert not same_vocabulary(policy_tokenizer, rm.tokenizer) and same_vocabulary(rm.tokenizer, rm.tokenizer)
    batch = policy_tokenizer(["pizza cheese"])
    with pytest.raises(ValueError, match="tokenizer and the reward model's differ .* the reward model needs text"):
        rm.score_ids(batch["input_ids"], batch["attention_mask"], policy_tokenizer)
    own = rm.tokenizer(["pizza cheese"])
    assert torch.equal(rm.score_ids(own["input_ids"], own["attention_mask"], rm.tokenizer), rm.score(["pizza cheese"]))
    with pytest.raises(ValueError, match="unknown label 'toxic'"):
        rm.label_index("toxic")
    with pytest.raises(ValueError, match="say which one"):
        RewardModel(rm.model, rm.tokenizer).label_index(None)


def test_a_folder_of_splits_gives_eval_and_test_figures(llama_folder, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for split, seed, n in (("train", 0, 96), ("validation", 1, 24), ("test", 2, 24)):
        write_jsonl(folder / f"{split}.jsonl", labelled_rows(n, seed))
    result = train_reward_model(str(llama_folder), str(folder), out=None, max_steps=10, lr=3e-3, batch_size=16,
                                progress=False)
    assert result.eval_after["rows"] == 24 and result.test_after["rows"] == 24
    assert result.test_after["loss"] < result.test_before["loss"]


def test_chitchat_toxicity_labels_are_alt_profanity_checks():
    """The derived set: labels are the labeller's P(offensive) > 0.5, conversations never shared by two
    splits, no text in two splits, a quarter toxic; the data card says the labels are derived."""
    from gencycle.data.toxicity import data_card, offensive_probability, toxicity_records
    splits = {name: toxicity_records(name) for name in ("train", "validation", "test")}
    for rows in splits.values():
        assert 0.2 < sum(r["label"] for r in rows) / len(rows) < 0.3
        assert all(r["label"] == int(r["score"] > 0.5) for r in rows)
    sample = splits["test"][:50]
    rescored = offensive_probability([r["text"] for r in sample])
    assert all(abs(p - r["score"]) < 1e-5 for p, r in zip(rescored, sample))
    convs = [{r["conv_id"] for r in rows} for rows in splits.values()]
    texts = [{" ".join(r["text"].split()).lower() for r in rows} for rows in splits.values()]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not convs[i] & convs[j] and not texts[i] & texts[j]
    card = data_card()
    assert "derived, not human" in card and "alt-profanity-check" in card
