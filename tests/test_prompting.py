import warnings

import pytest
import torch

from gencycle.data import DialogueExample
from gencycle.prompting import FewShotBuilder, MissingFieldError, PromptTemplate, render_chat, template

POOL = [DialogueExample(f"d{i}", f"#Person1#: line {i}", f"Summary {i}.") for i in range(5)]


def test_template_fields_and_format():
    t = PromptTemplate("{greeting}, {name}! {{literal}} {name}")
    assert t.fields == ("greeting", "name")
    assert t.format(greeting="Hi", name="Ada", unused=1) == "Hi, Ada! {literal} Ada"
    with pytest.raises(MissingFieldError, match="needs name; got greeting"):
        t.format(greeting="Hi")
    with pytest.raises(ValueError, match="fields must be names"):
        PromptTemplate("{} and {0}")


def test_named_templates():
    assert template("dialogsum").format(dialogue="D") == "Summarize the following conversation.\n\nD\n\nSummary:"
    assert template("dialogsum-flan").fields == ("dialogue",)
    assert template("instruction-input-answered").fields == ("instruction", "input", "response")
    with pytest.raises(KeyError, match="known: dialogsum"):
        template("nope")


def test_zero_one_three_shots_exact_text():
    builder = FewShotBuilder.from_templates("dialogsum", POOL)
    query = DialogueExample("q", "#Person1#: the query", "hidden")
    zero = builder.build(query, shots=0)
    assert zero.text == "Summarize the following conversation.\n\n#Person1#: the query\n\nSummary:"
    assert zero.examples_used == [] and zero.dropped == 0
    one = builder.build(query, shots=1)
    assert one.text == ("Summarize the following conversation.\n\n#Person1#: line 0\n\nSummary: Summary 0."
                        "\n\n\n"
                        "Summarize the following conversation.\n\n#Person1#: the query\n\nSummary:")
    three = FewShotBuilder("D: {dialogue}\nS: {summary}", "D: {dialogue}\nS:", POOL,
                           instruction="Summarize each dialogue.", separator="\n\n").build(query, shots=3)
    assert three.text == ("Summarize each dialogue.\n\n"
                          "D: #Person1#: line 0\nS: Summary 0.\n\n"
                          "D: #Person1#: line 1\nS: Summary 1.\n\n"
                          "D: #Person1#: line 2\nS: Summary 2.\n\n"
                          "D: #Person1#: the query\nS:")
    assert [e.id for e in three.examples_used] == ["d0", "d1", "d2"]


def test_plain_string_query_and_query_never_its_own_example():
    builder = FewShotBuilder("{dialogue} => {summary}", "{dialogue} =>", POOL, separator="\n")
    assert builder.build("#Person1#: line 0", shots=1).text == "#Person1#: line 1 => Summary 1.\n#Person1#: line 0 =>"
    with pytest.raises(ValueError, match="only 4 examples"):
        builder.build(POOL[0], shots=5)


def test_random_selection_is_seeded():
    make = lambda seed: FewShotBuilder("{dialogue}: {summary}", "{dialogue}:", POOL, selection="random", seed=seed)
    picks = [e.id for e in make(1).build("q", shots=3).examples_used]
    assert picks == [e.id for e in make(1).build("q", shots=3).examples_used]
    assert len(set(picks)) == 3
    assert any([e.id for e in make(s).build("q", shots=3).examples_used] != picks for s in range(2, 6))


# Hand-made 2-d embeddings: the angle of each text's vector decides similarity.
VECTORS = {"north": [0.0, 1.0], "east": [1.0, 0.0], "north-east": [1.0, 1.0], "south": [0.0, -1.0],
           "mostly north": [0.2, 3.0], "mostly east": [5.0, 1.0]}


def embed(texts):
    return torch.tensor([VECTORS[t] for t in texts])


def test_similar_selection_picks_nearest_by_cosine():
    pool = [{"q": t, "a": t.upper()} for t in ["north", "east", "north-east", "south"]]
    builder = FewShotBuilder("{q} -> {a}", "{q} ->", pool, selection="similar", embed_fn=embed, separator="\n")
    # By cosine, "mostly east" is nearest to "east" (0.98), then "north-east" (0.83).
    assert [e["q"] for e in builder.build("mostly east", shots=1).examples_used] == ["east"]
    prompt = builder.build("mostly north", shots=3)
    # Most similar last, next to the query; "south" is least similar and left out.
    assert prompt.text == "east -> EAST\nnorth-east -> NORTH-EAST\nnorth -> NORTH\nmostly north ->"
    with pytest.raises(ValueError, match="needs embed_fn"):
        FewShotBuilder("{q} {a}", "{q}", pool, selection="similar")


def test_overflow_drops_least_relevant_keeps_query_and_warns():
    words = lambda text: len(text.split())  # a "tokenizer": one token per word
    pool = [{"q": t, "a": "x"} for t in ["north", "east", "north-east", "south"]]
    builder = FewShotBuilder("{q} -> {a}", "{q} ->", pool, selection="similar", embed_fn=embed,
                             separator="\n", count_tokens=words, max_tokens=8)
    with pytest.warns(UserWarning, match="dropped 2 of 3 in-context examples"):
        prompt = builder.build("mostly north", shots=3)
    assert prompt.text == "north -> x\nmostly north ->"  # the nearest example stays
    assert prompt.dropped == 2 and words(prompt.text) <= 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fits: no warning
        assert builder.build("mostly north", shots=1).dropped == 0
    tight = FewShotBuilder("{q} -> {a}", "{q} ->", pool, count_tokens=words, max_tokens=2)
    with pytest.raises(ValueError, match="the query alone is 3 tokens, more than max_tokens=2"):
        tight.build("mostly north", shots=1)


class FakeChatTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        assert add_generation_prompt and not tokenize
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + "<|im_start|>assistant\n"


def test_render_chat():
    assert render_chat(FakeChatTokenizer(), "Hi", system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(FakeChatTokenizer(), "Hi").startswith("<|im_start|>user\nHi")
    with pytest.raises(TypeError, match="no apply_chat_template"):
        render_chat(object(), "Hi")
