"""Lamini's output_type: checking the spec, reading typed values out of plain answers and JSON objects."""

from __future__ import annotations

import pytest

from memtune.output_types import (
    OutputTypeError,
    check_output_type,
    json_schema,
    parse_object,
    parse_value,
)
from memtune.spec import SpecError


def test_bad_output_types_name_the_key():
    with pytest.raises(SpecError, match=r"output_type\.moons: type must be one of"):
        check_output_type({"moons": "integer"})
    with pytest.raises(SpecError, match=r"output_type\.label: an enum must be a non-empty list"):
        check_output_type({"label": []})
    with pytest.raises(SpecError, match=r"output_type\.label: the enum repeats a value"):
        check_output_type({"label": ["a", "a"]})
    with pytest.raises(SpecError, match=r"output_type: must be a non-empty dict"):
        check_output_type({})
    assert check_output_type({"a": "str", "b": ["x", 2]}) == {"a": "str", "b": ["x", 2]}


@pytest.mark.parametrize(
    ("kind", "answer", "value"),
    [
        ("int", "7", 7),
        ("int", " 7.", 7),
        ("int", "It has 7 moons.", 7),
        ("int", "12,500", 12500),
        ("int", "-3 degrees", -3),
        ("int", "1847", 1847),
        ("float", "3.25", 3.25),
        ("float", "214 meters", 214.0),
        ("float", "about 1.5e3 kg", 1500.0),
        ("bool", "Yes, it is.", True),
        ("bool", "false", False),
        ("bool", "No.", False),
        ("str", "  Port Halvaren \n", "Port Halvaren"),
        (["red", "green"], "Green", "green"),
        (["red", "green"], "The light was green.", "green"),
        ([1, 2, 3], "2", 2),
    ],
)
def test_plain_answers_fill_a_typed_key(kind, answer, value):
    parsed = parse_value("key", kind, answer)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("kind", "answer", "why"),
    [
        ("int", "seven", "found no single number"),
        ("int", "3.5", "found no single number"),  # not an int, and its digits are not two ints
        ("int", "between 3 and 5", "found no single number"),
        ("int", "ZT-48213", "found no single number"),  # a code, not a number
        ("int", "7Q-KX-3391", "found no single number"),
        ("float", "", "found no single number"),
        ("bool", "maybe", "expected a bool"),
        (["red", "green"], "blue", "found none of them"),
        (["red", "green"], "red or green", r"found \['red', 'green'\]"),
    ],
)
def test_answers_without_the_value_name_the_key(kind, answer, why):
    with pytest.raises(OutputTypeError, match=rf"output_type 'key': .*{why}.*the model answered") as raised:
        parse_value("key", kind, answer)
    assert raised.value.key == "key" and raised.value.answer == answer


def test_json_objects_fill_several_keys():
    wanted = {"age": "int", "units": "str", "ok": "bool", "ratio": "float", "color": ["red", "green"]}
    text = 'Sure: {"age": "25", "units": "years", "ok": true, "ratio": 1, "color": "green", "extra": 0}'
    assert parse_object(text, wanted) == {"age": 25, "units": "years", "ok": True, "ratio": 1.0, "color": "green"}
    with pytest.raises(OutputTypeError, match=r"output_type 'units': missing from the JSON object"):
        parse_object('{"age": 25}', {"age": "int", "units": "str"})
    with pytest.raises(OutputTypeError, match=r"output_type 'age': expected an int, got \[25\]"):
        parse_object('{"age": [25], "units": "y"}', {"age": "int", "units": "str"})
    with pytest.raises(OutputTypeError, match=r"output_type 'age': expected a JSON object holding every key"):
        parse_object("twenty-five years", {"age": "int", "units": "str"})


def test_json_schema_requires_every_key_and_nothing_else():
    assert json_schema({"age": "int", "units": ["years", "months"], "ok": "bool"}) == {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "units": {"enum": ["years", "months"]}, "ok": {"type": "boolean"}},
        "required": ["age", "units", "ok"],
        "additionalProperties": False,
    }
