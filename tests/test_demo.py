"""The tour of `make demo`, run end to end on a tiny random chat model (the real run uses SmolLM2)."""

import warnings

from gencycle import demo
from gencycle.evaluation.report import Section
from tiny_llm import save_tiny_chat_model


def test_tour_writes_the_report_and_takes_new_sections(tmp_path, monkeypatch):
    model = save_tiny_chat_model(tmp_path / "model", context=4096)
    monkeypatch.setattr(demo, "MAX_NEW_TOKENS", 6)
    monkeypatch.setattr(demo, "SECTIONS", list(demo.SECTIONS))
    monkeypatch.setattr(demo, "FT_STEPS", 2)
    monkeypatch.setattr(demo, "FT_BATCH", 2)
    seen = {}

    def later_stage(tour):
        seen["results"] = tour.comparison()  # a later stage reuses the prompting results
        return Section("7. Later stage", text="a later stage goes here")

    demo.add_section(later_stage, after="finetune_section")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny tokenizer makes long prompts: examples may be dropped
        paths = demo.run(tmp_path / "out", examples=2, model=str(model))
    report = paths["markdown"].read_text()
    titles = [line for line in report.splitlines() if line.startswith("## ")]
    assert titles == ["## 1. Select: the model", "## 2. How a dialogue is tokenized", "## 3. Inside the model: attention",
                      "## 4. Prompt engineering: zero, one and few shots", "## 5. Evaluate: ROUGE over 2 test dialogues",
                      "## Human reference vs. each variant", "## 6. Adapt: LoRA fine-tuning", "## 7. Later stage",
                      "## Run"]
    assert len(seen["results"]) == 6 and all(len(r.predictions) == 2 for r in seen["results"])
    assert "| 3-shot, sample:temperature=0.7,top_p=0.9 |" in report
    assert "data:image/png;base64," in paths["html"].read_text()
    assert "0-shot greedy on 2 test dialogues" in report and "trainable" in report.lower()
    for name in ("attention.png", "rouge.png", "comparison/scores.json", "comparison/report.html",
                 "finetune/loss_curve.png", "finetune/adapter/adapter_config.json"):
        assert (tmp_path / "out" / name).exists()
