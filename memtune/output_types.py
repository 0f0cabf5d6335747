"""Lamini's `output_type`: the typed shape of an answer, `{"key": "str" | "int" | "float" | "bool" | [choices]}`.

    check_output_type({"moons": "int"})                 # validated; a bad spec names `output_type.<key>`
    parse_value("moons", "int", "7")                    # 7: one key is filled from the model's plain answer
    parse_object('{"age": 25, "units": "years"}', {"age": "int", "units": "str"})   # several keys: a JSON object
    json_schema({"age": "int", "units": ["years", "months"]})   # what constrained decoding enforces

One key is filled from the answer the model gives to the question as asked, so a memory tuned on bare answers
("7") fills it: the text is parsed and validated for the key's type, and an answer that holds no such value raises
`OutputTypeError` naming the key. Several keys need a JSON object; how the SDK obtains one is in `memtune.client`.
No torch here: the CLI and the SDK import this module cheaply.
"""

from __future__ import annotations

import json
import re
from typing import Any

from memtune.spec import SpecError

SCALAR_TYPES = ("str", "int", "float", "bool")
OutputType = dict[str, Any]
"""key -> "str" | "int" | "float" | "bool" | a non-empty list of allowed values (an enum)."""

# A number standing alone in a sentence: not part of a code such as "ZT-48213" or "7Q", not a digit of "3.5" when
# an int is asked. Thousands separators ("12,500") are accepted.
_INT = r"[-+]?\d{1,3}(?:,\d{3})+|[-+]?\d+"
_FLOAT = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
_ALONE_BEFORE = r"(?<![\w.\-+])"
_ALONE_AFTER = r"(?![\w\-]|\.\d)"
_INT_ALONE = re.compile(_ALONE_BEFORE + f"(?:{_INT})" + _ALONE_AFTER)
_FLOAT_ALONE = re.compile(_ALONE_BEFORE + f"(?:{_FLOAT})" + _ALONE_AFTER)
_TRUE = {"yes", "true", "y", "correct", "right"}
_FALSE = {"no", "false", "n", "incorrect", "wrong"}
_EDGE_PUNCTUATION = " \t\n.!,;:'\"`()[]"


class OutputTypeError(ValueError):
    """The answer cannot fill a key of `output_type`; `key` names it and `answer` is what the model said."""

    def __init__(self, key: str, message: str, answer: str):
        self.key = key
        self.answer = answer
        super().__init__(f"output_type {key!r}: {message}; the model answered {answer!r}")


def check_output_type(output_type: Any) -> OutputType:
    """Validate an `output_type` before any model work; every problem is named `output_type.<key>` in one error."""
    if not isinstance(output_type, dict) or not output_type:
        raise SpecError([("output_type", "must be a non-empty dict of key -> type")], "output_type")
    problems = []
    for key, kind in output_type.items():
        where = f"output_type.{key}"
        if not isinstance(key, str) or not key:
            problems.append((where, "keys must be non-empty strings"))
        elif isinstance(kind, list):
            if not kind or not all(isinstance(choice, str | int | float | bool) for choice in kind):
                problems.append((where, "an enum must be a non-empty list of strings or numbers"))
            elif len({json.dumps(choice) for choice in kind}) != len(kind):
                problems.append((where, f"the enum repeats a value: {kind}"))
        elif kind not in SCALAR_TYPES:
            problems.append(
                (where, f"type must be one of {list(SCALAR_TYPES)} or a list of allowed values, got {kind!r}")
            )
    if problems:
        raise SpecError(problems, "output_type")
    return output_type


def _type_name(kind: Any) -> str:
    if isinstance(kind, list):
        return f"one of {kind}"
    return f"an {kind}" if kind == "int" else f"a {kind}"


def _single_number(pattern: re.Pattern[str], text: str) -> str | None:
    """The one number standing alone in `text`, or None when there is none or more than one."""
    found = pattern.findall(text)
    return found[0] if len(found) == 1 else None


def parse_value(key: str, kind: Any, answer: str) -> Any:
    """Read one value of `kind` out of a plain answer ("7", "7 moons", "It has 7 moons."); raise OutputTypeError.

    int/float: the whole answer is the number, or exactly one number stands alone in it (a code such as
    "ZT-48213" is not a number). bool: the first word is yes/true or no/false. Enum: the answer is one of the
    choices (ignoring case), or exactly one choice appears in it as a whole phrase. str: the answer, stripped.
    """
    text = answer.strip()
    if kind == "str":
        return text
    if kind in ("int", "float"):
        pattern = _INT_ALONE if kind == "int" else _FLOAT_ALONE
        whole = text.strip(_EDGE_PUNCTUATION)
        number = whole if pattern.fullmatch(whole) else _single_number(pattern, text)
        if number is None:
            raise OutputTypeError(key, f"expected {_type_name(kind)} and found no single number", answer)
        number = number.replace(",", "")
        return int(number) if kind == "int" else float(number)
    if kind == "bool":
        words = text.lower().split()
        first = words[0].strip(_EDGE_PUNCTUATION) if words else ""
        if first in _TRUE or first in _FALSE:
            return first in _TRUE
        raise OutputTypeError(key, "expected a bool (an answer starting with yes/true or no/false)", answer)
    return _parse_choice(key, kind, answer)


def _parse_choice(key: str, choices: list[Any], answer: str) -> Any:
    bare = answer.strip().strip(_EDGE_PUNCTUATION).lower()
    for choice in choices:
        if str(choice).lower() == bare:
            return choice
    present = [c for c in choices if re.search(rf"(?<!\w){re.escape(str(c).lower())}(?!\w)", answer.lower())]
    if len(present) == 1:
        return present[0]
    found = f"found {present}" if present else "found none of them"
    raise OutputTypeError(key, f"expected {_type_name(choices)}, {found}", answer)


def coerce_json_value(key: str, kind: Any, value: Any, answer: str) -> Any:
    """Check one value of a parsed JSON object against its type; numbers written as strings are accepted."""
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(kind, list):
        if value in kind:
            return kind[kind.index(value)]
        if isinstance(value, str):
            return _parse_choice(key, kind, value)
    if isinstance(value, str) and kind in ("int", "float", "bool"):
        return parse_value(key, kind, value)
    raise OutputTypeError(key, f"expected {_type_name(kind)}, got {value!r}", answer)


def find_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (an answer may wrap it in prose or a code fence), or None."""
    decoder = json.JSONDecoder()
    for start in (match.start() for match in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_object(answer: str, output_type: OutputType) -> dict[str, Any]:
    """Every key of `output_type` from a JSON object in `answer`, typed; OutputTypeError names the first failure."""
    found = find_object(answer)
    if found is None:
        raise OutputTypeError(next(iter(output_type)), "expected a JSON object holding every key", answer)
    shaped = {}
    for key, kind in output_type.items():
        if key not in found:
            raise OutputTypeError(key, "missing from the JSON object", answer)
        shaped[key] = coerce_json_value(key, kind, found[key], answer)
    return shaped


def json_schema(output_type: OutputType, max_string: int | None = None) -> dict[str, Any]:
    """The JSON Schema of the object `output_type` describes: every key required, nothing else allowed; string
    values at most `max_string` characters when given (constrained decoding then closes them in time)."""
    string: dict[str, Any] = {"type": "string", **({"maxLength": max_string} if max_string else {})}
    kinds = {"str": string, "int": {"type": "integer"}, "float": {"type": "number"}, "bool": {"type": "boolean"}}
    properties = {key: {"enum": kind} if isinstance(kind, list) else kinds[kind] for key, kind in output_type.items()}
    return {
        "type": "object",
        "properties": properties,
        "required": list(output_type),
        "additionalProperties": False,
    }
