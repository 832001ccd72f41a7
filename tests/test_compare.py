"""The comparison runner: variant specs, batched generation, and scores straight from rouge-score / sacrebleu."""

import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from gencycle.evaluation.compare import (
    PromptMaker, Variant, compare, first_paragraph, make_variants, parse_config, write_results,
)
from gencycle.evaluation.metrics import split_sentences
from gencycle.generation import LLM, GenerationConfig
from gencycle.prompting import FewShotBuilder, render_chat
from tiny_llm import records, save_tiny_chat_model


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return LLM.load(save_tiny_chat_model(tmp_path_factory.mktemp("tiny")))


def test_parse_config():
    assert parse_config("greedy") == GenerationConfig(do_sample=False)
    assert parse_config("sample:temperature=0.7,top_p=0.9") == GenerationConfig(do_sample=True, temperature=0.7,
                                                                                top_p=0.9)
    assert parse_config(" beam: num_beams=3 , length_penalty=0.5") == GenerationConfig(num_beams=3, length_penalty=0.5)
    assert parse_config("sample:top_k=40,seed=1,temperature=1").top_k == 40
    assert parse_config("greedy:repetition_penalty=1.2,stop=END").stop == ("END",)
    for bad, named in [("nucleus", "must start with"), ("sample:temperature", "key=value"),
                       ("sample:tempurature=0.7", "tempurature"), ("sample:top_p=2", "top_p"),
                       ("greedy:do_sample=maybe", "do_sample")]:
        with pytest.raises(ValueError, match=named):
            parse_config(bad)


def test_make_variants_names():
    variants = make_variants([0, 1], ["greedy", "sample:temperature=0.7"], selection="random", max_new_tokens=9)
    assert [v.name for v in variants] == ["0-shot, greedy", "0-shot, sample:temperature=0.7",
                                          "1-shot random, greedy", "1-shot random, sample:temperature=0.7"]
    assert all(v.config.max_new_tokens == 9 for v in variants)
    assert Variant(3, GenerationConfig(), chat=False).name == "3-shot, greedy, plain prompt"


def test_first_paragraph():
    assert first_paragraph("\n\n A summary.\nSecond line.\n\nSummarize the following") == "A summary.\nSecond line."
    assert first_paragraph("  ") == ""


def _direct_scores(predictions, references):
    """The metrics computed by calling rouge-score and sacrebleu here, not through gencycle."""
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    per = [scorer.score("\n".join(split_sentences(r)), "\n".join(split_sentences(p)))
           for p, r in zip(predictions, references)]
    scores = {t: sum(s[t].fmeasure for s in per) / len(per) for t in types}
    scores["bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
    scores["chrf"] = sacrebleu.corpus_chrf(predictions, [references]).score
    return scores


def test_runner_scores_equal_direct_library_calls(llm, tmp_path):
    pool, tests = records(["t1", "t2", "t3"]), records(["t4", "t5", "t6"])
    variants = make_variants([0, 1], ["greedy", "sample:temperature=0.7,top_p=0.9"], max_new_tokens=12)
    variants.append(Variant(1, GenerationConfig(max_new_tokens=12), chat=False))
    results = compare(llm, tests, variants, pool, batch_size=2, progress=False)
    references = [r["summary"] for r in tests]
    assert [r.name for r in results] == [v.name for v in variants]
    for result in results:
        assert len(result.predictions) == 3
        assert result.scores == pytest.approx(_direct_scores(result.predictions, references), abs=1e-12)
    # Greedy outputs are what one un-batched call per prompt gives, in the examples' order.
    builder = FewShotBuilder.from_templates("dialogsum", pool)
    for result, shots in ((results[0], 0), (results[2], 1)):
        alone = [first_paragraph(llm.chat(_turns(builder, r, shots), max_new_tokens=12)) for r in tests]
        assert result.predictions == alone
        assert result.settings["shots"] == shots and result.settings["chat_template"]
    plain = [first_paragraph(llm.generate(builder.build(r, 1).text, max_new_tokens=12)) for r in tests]
    assert results[4].predictions == plain
    # Sampling is seeded: the same run gives the same outputs.
    again = compare(llm, tests, variants[1:2], pool, batch_size=2, progress=False)
    assert again[0].predictions == results[1].predictions

    paths = write_results(tmp_path, results, tests)
    table = paths["scores_markdown"].read_text()
    assert "| 1-shot, greedy |" in table and f"{results[2].scores['rouge1']:.4f}" in table
    saved = json.loads(paths["scores_json"].read_text())
    assert saved["ids"] == ["t4", "t5", "t6"] and saved["references"] == references
    assert paths["html"].exists() and paths["chart"].exists()


def _turns(builder, record, shots):
    """A k-shot chat prompt written out by hand: each solved example is a user turn and an assistant turn."""
    messages = []
    for example in builder.build(record, shots).examples_used:
        messages += [{"role": "user", "content": f"Summarize the following conversation.\n\n{example['dialogue']}"
                                                 f"\n\nSummary:"},
                     {"role": "assistant", "content": example["summary"]}]
    return messages + [{"role": "user", "content": builder.build(record, 0).text}]


def test_chat_prompts_are_conversations(llm):
    maker = PromptMaker(llm, records(["t1", "t2", "t3"]))
    query = records(["t4"])[0]
    text, messages = maker.build(query, 0)
    assert maker.rendered(query, 0, chat=True) == render_chat(llm.tokenizer, text)
    text, messages = maker.build(query, 2)
    assert text == FewShotBuilder.from_templates("dialogsum", records(["t1", "t2"])).build(query, 2).text
    assert messages == _turns(FewShotBuilder.from_templates("dialogsum", records(["t1", "t2"])), query, 2)
    rendered = maker.rendered(query, 2, chat=True)
    assert rendered.count("<|im_start|>assistant\n") == 3 and rendered.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>assistant\n#Person2# likes pizza with cheese.<|im_end|>" in rendered
    assert maker.rendered(query, 2, chat=False) == text


def test_errors(llm):
    with pytest.raises(ValueError, match="no examples"):
        compare(llm, [], make_variants([0], ["greedy"]), records())
    with pytest.raises(ValueError, match="shots asked"):
        compare(llm, records(["t4"]), make_variants([5], ["greedy"], max_new_tokens=2), records(["t1"]),
                progress=False)
    with pytest.raises(ValueError, match="no 'summary'"):
        compare(llm, [{"id": "x", "dialogue": "hi"}], make_variants([0], ["greedy"]), [], progress=False)
