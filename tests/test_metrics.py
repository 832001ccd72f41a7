import json
import math
import types

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from gencycle.evaluation import (
    Section, Table, VariantResult, bleu, chrf, perplexity, rouge, split_sentences, text_scores,
    write_comparison, write_report,
)

PREDICTIONS = ["Tom and Amy are planning a picnic. They will bring sandwiches!",
               "#Person1# is late because the bus broke down.",
               "The cats were sitting on the mat."]
REFERENCES = ["Amy and Tom plan a picnic for Saturday. Amy brings sandwiches and Tom brings juice.",
              "#Person2# arrives late because of a traffic jam.",
              "A cat sat on the mat."]


def test_split_sentences():
    assert split_sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert split_sentences("Dr. Who") == ["Dr.", "Who"]  # simple rule: no abbreviation list


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for p, r in zip(PREDICTIONS, REFERENCES):
        s = scorer.score("\n".join(split_sentences(r)), "\n".join(split_sentences(p)))
        for k in expected:
            expected[k] += s[k].fmeasure / len(PREDICTIONS)
    assert rouge(PREDICTIONS, REFERENCES) == pytest.approx(expected, abs=1e-12)
    # rouge1/2/L ignore the sentence split: same as scoring the raw texts.
    raw = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    assert rouge(PREDICTIONS, REFERENCES)["rouge1"] == pytest.approx(sum(s["rouge1"].fmeasure for s in raw) / 3)
    assert rouge(["the cat"], ["the cat"]) == pytest.approx(dict.fromkeys(expected, 1.0))


def test_bleu_and_chrf_equal_sacrebleu():
    assert bleu(PREDICTIONS, REFERENCES) == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert chrf(PREDICTIONS, REFERENCES) == sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    scores = text_scores(PREDICTIONS, REFERENCES)
    assert list(scores) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf"]


def test_metric_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        bleu([], [])
    with pytest.raises(TypeError, match="lists of strings"):
        chrf("a", "a")


class Bigram(torch.nn.Module):
    """A bigram language model: logits for the next token depend on the current token only."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)  # (V, V) logits

    def forward(self, input_ids, attention_mask=None):
        return types.SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


class CharTokenizer:
    def encode(self, text):
        return [ord(c) - ord("a") for c in text]


def test_perplexity_matches_hand_computation():
    torch.manual_seed(0)
    table = torch.randn(3, 3)
    model = Bigram(table)
    texts = ["abca", "cb", "a", "bbbac"]  # "a" has no next token; batch_size=2 forces padding
    log_probs = table.log_softmax(-1)
    nll, count = 0.0, 0
    for text in texts:
        ids = CharTokenizer().encode(text)
        for prev, nxt in zip(ids, ids[1:]):
            nll -= log_probs[prev, nxt].item()
            count += 1
    assert count == 3 + 1 + 4
    assert perplexity(model, CharTokenizer(), texts, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)
    # Truncated to max_length=2 tokens, only the pairs "ab", "cb" and "bb" are scored.
    short = [t[:2] for t in texts]
    nll2 = -sum(log_probs[ord(t[0]) - 97, ord(t[1]) - 97].item() for t in short if len(t) == 2)
    assert perplexity(model, CharTokenizer(), texts, max_length=2) == pytest.approx(math.exp(nll2 / 3), rel=1e-5)
    assert model.training  # the model's mode is restored
    with pytest.raises(ValueError, match="two or more tokens"):
        perplexity(model, CharTokenizer(), ["a"])


def _results():
    return [VariantResult("0-shot, greedy", ["Tom plans a picnic.", "Someone is late."],
                          {"rouge1": 0.3, "rougeL": 0.25, "bleu": 5.0}, {"shots": 0, "config": "greedy"}),
            VariantResult("1-shot, greedy", ["Amy and Tom plan a | picnic.", "#Person2# is late."],
                          {"rouge1": 0.5, "rougeL": 0.2, "bleu": 9.0}, {"shots": 1, "config": "greedy"})]


def test_write_comparison(tmp_path):
    refs = ["Amy and Tom plan a picnic.", "#Person2# arrives late."]
    paths = write_comparison(tmp_path, _results(), refs, ids=["d1", "d2"], dialogues=["A: hi\nB: <hello>", "x"],
                             count=1)
    assert {p.name for p in tmp_path.iterdir()} == {
        "scores.png", "scores.md", "scores.json", "side_by_side.md", "report.md", "report.html"}
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["scores_markdown"].read_text()
    assert "| variant | rouge1 | rougeL | bleu |" in md
    assert "| 1-shot, greedy | 0.5000 | 0.2000 | 9.0000 |" in md
    assert "rouge1: 1-shot, greedy (0.5000); rougeL: 0-shot, greedy (0.2500)" in md
    assert "![scores](scores.png)" in md
    data = json.loads(paths["scores_json"].read_text())
    assert data["metrics"] == ["rouge1", "rougeL", "bleu"]
    assert data["variants"][1]["settings"] == {"shots": 1, "config": "greedy"}
    assert data["variants"][0]["predictions"][1] == "Someone is late."
    assert data["ids"] == ["d1", "d2"] and data["references"] == refs
    side = paths["side_by_side"].read_text()
    assert "**Example d1**" in side and "d2" not in side  # count=1
    assert "| human reference | Amy and Tom plan a picnic. |" in side
    assert "| 1-shot, greedy | Amy and Tom plan a \\| picnic. |" in side  # pipe escaped
    assert "| dialogue | A: hi<br>B: <hello> |" in side
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "<td>A: hi<br>B: &lt;hello&gt;</td>" in page
    assert "<th>rouge1</th>" in page
    report = paths["markdown"].read_text()
    assert report.index("## Scores") < report.index("## Human reference vs. model outputs")


def test_write_comparison_checks_lengths(tmp_path):
    with pytest.raises(ValueError, match="has 2 predictions for 3 references"):
        write_comparison(tmp_path, _results(), ["a", "b", "c"])


def test_write_report_with_custom_sections(tmp_path):
    sections = [Section("Model card", text="A tiny model.\n\nSecond paragraph.", code="layers: 2"),
                Section("Numbers", tables=[Table(["a", "b"], [["1", "2"]], caption="T")])]
    paths = write_report(tmp_path / "out", "Tour", sections)
    md = paths["markdown"].read_text()
    assert md.startswith("# Tour\n\n## Model card\n\nA tiny model.\n\nSecond paragraph.\n\n```\nlayers: 2\n```")
    assert "**T**\n\n| a | b |\n|---|---|\n| 1 | 2 |" in md
    page = paths["html"].read_text()
    assert "<p>A tiny model.</p>\n<p>Second paragraph.</p>\n<pre>layers: 2</pre>" in page
