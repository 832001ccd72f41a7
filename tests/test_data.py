import shutil
from pathlib import Path

import pytest

from gencycle.data import SHIPPED_DIR, DialogSumFormatError, DialogueExample, load_dialogsum

FIXTURES = Path(__file__).parent / "fixtures"


def test_csv_loads():
    examples = load_dialogsum(FIXTURES / "dialogsum_sample.csv")
    assert len(examples) == 2
    first = examples[0]
    assert first == DialogueExample(
        id="train_0",
        dialogue="#Person1#: Hi, Mr. Smith. I'm Doctor Hawkins. Why are you here today?\n"
                 "#Person2#: I found it would be a good idea to get a check-up.",
        summary="Mr. Smith's getting a check-up, and Doctor Hawkins advises him to have one every year.",
        topic="get a check-up")


def test_jsonl_loads_original_release_columns():
    # The original DialogSum test file: `fname`, `summary1`, `topic1`; blank lines skipped.
    examples = load_dialogsum(FIXTURES / "dialogsum_sample.jsonl")
    assert [e.id for e in examples] == ["test_0_1", "test_1_1"]
    assert examples[1].summary == "#Person2# arrives late because of traffic jam."
    assert examples[1].topic == "public transportation"


def test_folder_of_splits(tmp_path):
    shutil.copy(FIXTURES / "dialogsum_sample.csv", tmp_path / "train.csv")
    shutil.copy(FIXTURES / "dialogsum_sample.jsonl", tmp_path / "dialogsum.dev.jsonl")
    assert len(load_dialogsum(tmp_path, "train")) == 2
    assert load_dialogsum(tmp_path, "validation") == load_dialogsum(tmp_path, "dev")
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        load_dialogsum(tmp_path, "test")
    with pytest.raises(ValueError, match="pass split="):
        load_dialogsum(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        load_dialogsum(tmp_path, "holdout")


@pytest.mark.parametrize("name, message", [
    ("missing_summary.csv", "row 1: missing column 'summary'"),
    ("empty_dialogue.csv", "row 2: empty 'dialogue'"),
    ("bad_line.jsonl", "row 2: bad JSON line"),
])
def test_malformed_files_name_row_and_column(name, message):
    with pytest.raises(DialogSumFormatError, match=message) as info:
        load_dialogsum(FIXTURES / name)
    assert name in str(info.value)


def test_empty_summary_is_an_error(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"id": "x", "dialogue": "#Person1#: hi", "summary": ""}\n')
    with pytest.raises(DialogSumFormatError, match="row 1: empty 'summary'"):
        load_dialogsum(tmp_path / "d.jsonl")


def test_split_on_a_single_file_is_an_error():
    with pytest.raises(ValueError, match="single file"):
        load_dialogsum(FIXTURES / "dialogsum_sample.csv", "train")


def test_shipped_data_is_package_data():
    import gencycle.data
    assert SHIPPED_DIR == Path(gencycle.data.__file__).resolve().parent / "chitchat-dialogsum"
    assert {"train.jsonl", "validation.jsonl", "test.jsonl", "README.md"} <= {p.name for p in SHIPPED_DIR.iterdir()}


def test_shipped_dataset_counts_no_empty_or_duplicate_summaries_no_overlap():
    from gencycle.data.dialogsum import load_shipped
    splits = {name: load_shipped(name) for name in ("train", "validation", "test")}
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 220, "validation": 55, "test": 55}
    everything = [row for rows in splits.values() for row in rows]
    summaries = [row.summary.strip() for row in everything]
    assert all(summaries) and all(row.dialogue.strip() for row in everything)
    assert len(set(summaries)) == len(summaries)
    dialogues = {name: {row.dialogue for row in rows} for name, rows in splits.items()}
    assert not dialogues["train"] & dialogues["validation"]
    assert not dialogues["train"] & dialogues["test"]
    assert not dialogues["validation"] & dialogues["test"]
    assert len({row.id for row in everything}) == 330


def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": "x", "dialogue": "hi", "summary": "s"}\n{"id": "y", "dialogue": "caf\xe9", "summary": "s"}\n')
    with pytest.raises(DialogSumFormatError, match=r"d.jsonl: line 2 is not UTF-8 text \(byte 0xe9\)"):
        load_dialogsum(path)
    with pytest.raises(DialogSumFormatError, match="is a folder"):
        from gencycle.data.files import read_rows
        read_rows(tmp_path, DialogSumFormatError)
