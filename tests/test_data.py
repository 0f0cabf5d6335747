"""Datasets: every bad line reported by number, field mapping, and the content-addressed store."""

from __future__ import annotations

import json

import pytest

from memtune import data
from memtune.spec import DatasetRef

GOOD = [
    {"input": "Who won the 2031 Tellurian Chess Open?", "output": "Anneke Voss", "source": "x"},
    {"input": "What year was the Brennock Accord signed?", "output": "1847"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_bad_line_is_reported_by_number_in_one_error(tmp_path):
    lines = [
        json.dumps(GOOD[0]),  # 1 fine
        "{not json",  # 2
        json.dumps({"input": "q"}),  # 3 missing output
        "",  # 4 blank lines are skipped, numbering is kept
        json.dumps({"input": "q", "output": " "}),  # 5 empty output
        json.dumps(["input", "output"]),  # 6 not an object
        json.dumps({"input": 3, "output": "a"}),  # 7 wrong type
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(data.DatasetError) as caught:
        data.read_examples(str(path))
    assert [line for line, _ in caught.value.problems] == [2, 3, 5, 6, 7]
    message = str(caught.value)
    for words in (
        "line 2: not valid JSON",
        "line 3: missing key 'output'",
        "line 5: empty 'output'",
        "line 6: expected a JSON object",
        "line 7: 'input' must be a string",
    ):
        assert words in message


def test_json_array_items_are_numbered_and_extra_keys_ignored(tmp_path):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([*GOOD, {"output": "no question"}]), encoding="utf-8")
    with pytest.raises(data.DatasetError, match="line 1: item 3: missing key 'input'"):
        data.read_examples(str(path))
    path.write_text(json.dumps([*GOOD, {"output": "no question"}], indent=2), encoding="utf-8")
    with pytest.raises(data.DatasetError, match="line 11: item 3: missing key 'input'"):  # the line it starts on
        data.read_examples(str(path))
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    assert [e.output for e in data.read_examples(f"file://{path}")] == ["Anneke Voss", "1847"]


def test_field_mapping_reads_other_names(tmp_path):
    path = write_jsonl(tmp_path / "sql.jsonl", [{"question": "How many teams?", "sql": "SELECT COUNT(*) FROM t"}])
    ref = DatasetRef(uri=str(path), inputKey="question", outputKey="sql")
    assert data.load_examples(ref) == [data.Example("How many teams?", "SELECT COUNT(*) FROM t")]
    with pytest.raises(data.DatasetError, match="missing key 'input'"):
        data.read_examples(str(path))


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(data.DatasetError, match="file not found"):
        data.read_examples(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(data.DatasetError, match="no records"):
        data.read_examples(str(tmp_path / "empty.jsonl"))


def test_same_records_as_array_or_jsonl_get_the_same_id_and_are_stored_once(tmp_path):
    store = str(tmp_path / "store")
    jsonl = write_jsonl(tmp_path / "a.jsonl", GOOD)
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"output": r["output"], "input": r["input"]} for r in GOOD]), encoding="utf-8")
    first = data.upload_examples(data.read_examples(str(jsonl)), store)
    stored = tmp_path / "store" / "datasets" / f"{first}.jsonl"
    mtime = stored.stat().st_mtime_ns
    second = data.upload_examples(data.read_examples(str(array)), store)
    assert first == second
    assert stored.stat().st_mtime_ns == mtime  # not rewritten
    assert list((tmp_path / "store" / "datasets").iterdir()) == [stored]
    # Canonical form: compact, sorted keys, {input, output} only, one record a line.
    second_line = '{"input":"What year was the Brennock Accord signed?","output":"1847"}'
    assert stored.read_text(encoding="utf-8").splitlines()[1] == second_line


def test_different_order_is_a_different_dataset():
    examples = data.parse_records(json.dumps(GOOD), "x")
    assert data.dataset_id(examples) != data.dataset_id(examples[::-1])


def test_load_by_id_verifies_content(tmp_path):
    store = str(tmp_path)
    identifier = data.upload_examples(data.parse_records(json.dumps(GOOD), "x"), store)
    loaded = data.load_examples(DatasetRef(id=identifier, store=store), max_examples=1)
    assert loaded == [data.Example(GOOD[0]["input"], GOOD[0]["output"])]
    (tmp_path / "datasets" / f"{identifier}.jsonl").write_text('{"input":"x","output":"y"}\n', encoding="utf-8")
    with pytest.raises(data.DatasetError, match="corrupt"):
        data.load_by_id(identifier, store)


def test_lengths_over_max_are_named_by_line():
    examples = data.parse_records("\n".join(json.dumps(r) for r in GOOD), "x")
    data.check_lengths(examples, lambda e: len(e.input) + len(e.output), 64)
    with pytest.raises(data.DatasetError) as caught:
        data.check_lengths(examples, lambda e: 100 if e.line == 2 else 3, 64)
    assert caught.value.problems == [(2, "100 tokens exceed max_length 64")]


def test_question_files_keep_their_fields_and_name_bad_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"input": "Q1?", "id": 7}\n\n{"input": ""}\n[1]\n{oops\n', encoding="utf-8")
    with pytest.raises(data.DatasetError) as caught:
        data.read_question_records(path)
    assert [line for line, _ in caught.value.problems] == [3, 4, 5]
    path.write_text('{"input": "Q1?", "id": 7}\n', encoding="utf-8")
    assert data.read_question_records(path) == [{"input": "Q1?", "id": 7}]


def test_deduplicate_keeps_one_answer_per_question_the_last_line_winning() -> None:
    from memtune.data import Example, deduplicate

    examples = [
        Example("Where is X?", "A", 1),
        Example("Who is Y?", "B", 2),
        Example("Where is X? ", "A", 3),  # same question (whitespace), same answer: merged
        Example("Where is X?", "C", 4),  # a later, different answer supersedes
    ]
    unique = deduplicate(examples)
    assert [(e.input.strip(), e.output, e.line) for e in unique.examples] == [
        ("Where is X?", "C", 4),
        ("Who is Y?", "B", 2),
    ]
    assert unique.repeated == 1
    assert unique.conflicts == [("Where is X?", [1, 3, 4])]
    assert deduplicate(examples[:2]).conflicts == [] and deduplicate(examples[:2]).repeated == 0
