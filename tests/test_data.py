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


# ---------------------------------------------------------------------------------------------------------------
# Records are split on "\n" only, and what upload stores reads back exactly.

SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]  # str.splitlines() splits on all


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(c):04X}" for c in SEPARATORS])
def test_raw_line_separators_inside_strings_are_text_not_line_breaks(tmp_path, separator):
    record = {"input": f"first{separator}second?", "output": f"a{separator}b"}
    lines = [json.dumps(record, ensure_ascii=False), json.dumps(GOOD[1]), '{"input": "q"}']
    path = tmp_path / "sep.jsonl"
    path.write_text("\r\n".join(lines) + "\n", encoding="utf-8")  # CRLF line ends as well
    with pytest.raises(data.DatasetError) as caught:
        data.read_examples(str(path))
    assert caught.value.problems == [(3, "missing key 'output'")]  # the third line, not a later one
    path.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    examples = data.read_examples(str(path))
    assert [(e.input, e.line) for e in examples] == [(record["input"], 1), (GOOD[1]["input"], 2)]


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(c):04X}" for c in SEPARATORS])
def test_what_upload_stores_reads_back_as_the_same_records(tmp_path, separator):
    records = [{"input": f"Who{separator}won?", "output": f"Anneke{separator}Voss"}, GOOD[1]]
    for name, text in (
        ("array.json", json.dumps(records, ensure_ascii=False)),
        ("lines.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)),
    ):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        examples = data.read_examples(str(path))
        identifier = data.upload_examples(examples, str(tmp_path / "store"))
        assert data.load_examples(DatasetRef(id=identifier, store=str(tmp_path / "store"))) == examples


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# (what the bad line holds, words of its error). Each is a valid-looking line 2 between two good lines.
BAD_LINES = [
    ('{"input": "\\ud800", "output": "a"}', "'input' holds a lone surrogate \\ud800 at character 1"),
    ('{"input": "q", "output": "x\\udfff"}', "'output' holds a lone surrogate \\udfff at character 2"),
    ('{"input": "q", "output": "a", "note": ' + "7" * 5000 + "}", "a number with more than 4300 digits"),
    ('{"input": "q", "output": "a", "note": ' + _deep(100_000) + "}", "nested too deeply"),
    (_deep(100_000), "nested too deeply"),
    ('{"input": "q", "output": "a"} {"x": 1}', "not valid JSON (Extra data"),
    ("\u2028", "not valid JSON"),
    ('"just a string"', "expected a JSON object, got str"),
]


@pytest.mark.parametrize(("line", "words"), BAD_LINES, ids=[w.split("(")[0][:30] for _, w in BAD_LINES])
def test_unreadable_records_are_named_by_line_in_jsonl_and_arrays(tmp_path, line, words):
    good = json.dumps(GOOD[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    with pytest.raises(data.DatasetError) as caught:
        data.read_examples(str(path))
    assert [number for number, _ in caught.value.problems] == [2]
    assert words in caught.value.problems[0][1]
    array = tmp_path / "bad.json"
    array.write_text(f"[\n{good},\n{line},\n{good}\n]", encoding="utf-8")
    with pytest.raises(data.DatasetError) as caught:
        data.read_examples(str(array))
    assert caught.value.problems[0][0] == 3  # the array's item 2 starts on line 3


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"input": "q", "output": "a"}\n{"input": "caf\xe9", "output": "a"}\n')
    with pytest.raises(data.DatasetError, match=r"line 2: not UTF-8 text \(invalid continuation byte at byte 44\)"):
        data.read_examples(str(path))
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode())  # a byte order mark is fine
    assert data.read_examples(str(path))[0].input == GOOD[0]["input"]


def test_a_corrupt_stored_dataset_is_repaired_by_uploading_the_same_data(tmp_path):
    store = str(tmp_path)
    examples = data.parse_records(json.dumps(GOOD), "x")
    first = data.store_dataset(examples, store)
    stored = tmp_path / "datasets" / f"{first.id}.jsonl"
    assert first.state == "written" and data.store_dataset(examples, store).state == "present"
    for damage in (b"", b'{"input":"x","output":"y"}\n', stored.read_bytes()[:-1]):
        stored.write_bytes(damage)
        with pytest.raises(data.DatasetError, match="corrupt"):
            data.load_by_id(first.id, store)
        again = data.store_dataset(examples, store)
        assert (again.id, again.state) == (first.id, "repaired")
        assert data.load_by_id(first.id, store) == examples


def test_sdk_records_are_named_by_position():
    with pytest.raises(data.DatasetError) as caught:
        data.examples_from_records([GOOD[0], {"input": "q", "output": 3}, "x"])
    assert str(caught.value).splitlines()[1:] == [
        "  - record 2: 'output' must be a string, got int",
        "  - record 3: expected a JSON object, got str",
    ]
