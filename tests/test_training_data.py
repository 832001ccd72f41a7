"""Instruction data: records -> prompts -> token ids with labels -> batches; clear errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from ddp_worker import char_tokenizer
from gencycle.training import (
    IGNORE_INDEX, Collator, DataError, Example, Pair, load_pairs, pack, read_records, to_pairs, tokenize,
)
from gencycle.training.data import shift_right


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_instruction_records_use_the_alpaca_templates():
    pairs = to_pairs([{"instruction": "Add.", "input": "2 2", "output": "4"}, {"instruction": "Hi", "output": "Hello"}])
    assert pairs[0].prompt.endswith("### Instruction:\nAdd.\n\n### Input:\n2 2\n\n### Response:\n")
    assert pairs[0].completion == "4"                      # the prompt ends in a newline: no space added
    assert "### Input" not in pairs[1].prompt and pairs[1].completion == "Hello"


def test_dialogue_records_and_prompt_records():
    [dialogue] = to_pairs([{"id": "1", "dialogue": "A: hi\nB: hello", "summary": "They greet."}])
    assert dialogue.prompt == "Summarize the following conversation.\n\nA: hi\nB: hello\n\nSummary:"
    assert dialogue.completion == " They greet."
    [plain] = to_pairs([{"prompt": "Q: 2+2?\nA:", "completion": "4"}])
    assert plain == Pair("Q: 2+2?\nA:", " 4")
    [custom] = to_pairs([{"dialogue": "x", "summary": "y"}], template="dialogsum-flan")
    assert custom.prompt == "Dialogue:\n\nx\n\nWhat was going on?"


def test_shipped_dialogue_splits_load():
    train = load_pairs("shipped", "train")
    assert len(train) == 220 and train[0].prompt.startswith("Summarize the following conversation.")


def test_csv_and_jsonl_files(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\nhello,world\n")
    assert load_pairs(tmp_path / "d.csv") == [Pair("hello", " world")]
    assert read_records(_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])) == [
        {"prompt": "a", "completion": "b"}]


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "record 2 has no 'output' field"),
    ('{"instruction": "a", "output": ""}\n', "record 1 has no 'output' field"),
    ('{"prompt": "a", "completion": "b"}\nnot json\n', "row 2: bad JSON"),
    ('{"text": "a"}\n', "expected instruction/output, prompt/completion or dialogue/summary"),
])
def test_bad_data_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_pairs(path)
    assert issubclass(DataError, ValueError)


def test_missing_file_and_empty_lists():
    with pytest.raises(FileNotFoundError, match="no data file"):
        read_records("/nonexistent/data.jsonl")
    with pytest.raises(DataError, match="empty"):
        to_pairs([])
    with pytest.raises(DataError, match="empty"):
        tokenize([], char_tokenizer())


def test_decoder_labels_mask_the_prompt_and_end_with_eos():
    tok = char_tokenizer()
    [example] = tokenize([Pair("ab>", "ba")], tok, "decoder", max_length=32)
    prompt, completion = tok.encode("ab>"), tok.encode("ba", add_special_tokens=False)
    assert example.input_ids == prompt + completion + [tok.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + completion + [tok.eos_token_id]


def test_long_pairs_lose_the_start_of_the_prompt():
    tok = char_tokenizer()
    with pytest.warns(UserWarning, match="1 of 1 examples were longer"):
        [example] = tokenize([Pair("abcdefgh>", "ab")], tok, "decoder", max_length=6)
    assert example.input_ids == tok.encode("gh>ab", add_special_tokens=False) + [tok.eos_token_id]


def test_seq2seq_examples_and_decoder_inputs():
    tok = char_tokenizer()
    [example] = tokenize([Pair("ab>", " ba")], tok, "encoder-decoder", max_length=32)
    assert example.input_ids == tok.encode("ab>") and example.labels == tok.encode("ba", add_special_tokens=False) + [1]
    batch = Collator(pad_token_id=0, decoder_start_token_id=0)([example, Example([5], [7, 1])])
    assert batch["labels"].tolist() == [example.labels, [7, 1, IGNORE_INDEX]]
    assert batch["decoder_input_ids"].tolist() == [[0] + example.labels[:-1], [0, 7, 1]]
    assert shift_right(torch.tensor([[4, IGNORE_INDEX]]), 9, 0).tolist() == [[9, 4]]


def test_collator_pads_right_and_masks_padding():
    batch = Collator(pad_token_id=0)([Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([5], [5])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [5, IGNORE_INDEX, IGNORE_INDEX]]


def test_packing_fills_rows_with_whole_examples():
    examples = [Example([1] * n, [2] * n) for n in (3, 4, 2, 5)]
    rows = pack(examples, max_length=7)
    assert [len(r) for r in rows] == [7, 7]                 # 3+4, 2+5: never split
    assert rows[1].labels == [2] * 7


def test_chat_template_pairs_end_with_the_end_of_turn_token():
    import gencycle
    from gencycle.training import chat_pairs
    tok = gencycle.load_tokenizer("smollm2-135m-instruct")
    [pair] = chat_pairs([Pair("Summarize: hi", " Hello.")], tok)
    assert pair.prompt.endswith("<|im_start|>user\nSummarize: hi<|im_end|>\n<|im_start|>assistant\n")
    [example] = tokenize([pair], tok, add_special_tokens=False)
    assert tok.decode(example.input_ids).endswith("<|im_start|>assistant\nHello.<|im_end|>")
    scored = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(scored) == "Hello.<|im_end|>"
