"""Datasets: `{"input", "output"}` pairs from JSONL or JSON arrays, validated line by line, stored by content.

A dataset's id is the sha256 of its canonical form: one compact JSON object per record, in order, with only
`input` and `output`, keys sorted, UTF-8, each line ending in a newline. A JSON array and the JSONL of the same
records therefore get the same id, and the stored file `{store}/datasets/{id}.jsonl` can be checked against
its own name when it is read back (on this machine or on a cluster).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from memtune import storage
from memtune.spec import DatasetRef, is_remote

log = logging.getLogger(__name__)

DATASETS_FOLDER = "datasets"


def memtune_home() -> Path:
    """Root of memtune's local caches (converted models, uploaded datasets, fetched runs)."""
    return Path(os.environ.get("MEMTUNE_HOME") or "~/.cache/memtune").expanduser()


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    line: int = field(default=0, compare=False)  # 1-based line of the source where the record starts
    item: int = field(default=0, compare=False)  # 1-based position in a JSON array (0 for JSONL)


class DatasetError(ValueError):
    """A dataset cannot be used. `problems` holds one `(line, message)` per bad record (line 0: whole file).

    `unit` names what the numbers count: file lines, or the records of a list handed to the SDK."""

    def __init__(self, source: str, problems: list[tuple[int, str]], unit: Literal["line", "record"] = "line"):
        self.source = source
        self.problems = problems
        shown = problems[:50]
        lines = "\n".join(f"  - {unit} {line}: {message}" if line else f"  - {message}" for line, message in shown)
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{source}: {len(problems)} bad record{'s' * (len(problems) != 1)}:\n{lines}{more}")


# A lone UTF-16 surrogate: JSON may spell one ("\ud800"), but it is no Unicode text and cannot be stored as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _record_errors(record: Any, input_key: str, output_key: str) -> list[str]:
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    errors = []
    for key in (input_key, output_key):
        if key not in record:
            errors.append(f"missing key {key!r}")
        elif not isinstance(record[key], str):
            errors.append(f"{key!r} must be a string, got {type(record[key]).__name__}")
        elif not record[key].strip():
            errors.append(f"empty {key!r}")
        elif found := _SURROGATE.search(record[key]):
            errors.append(
                f"{key!r} holds a lone surrogate \\u{ord(found.group()):04x} at character {found.start() + 1}, "
                "which is not Unicode text"
            )
    return errors


def parse_records(text: str, source: str, input_key: str = "input", output_key: str = "output") -> list[Example]:
    """Parse JSONL or a JSON array; report every bad record at once, by line. Extra keys in a record are ignored.

    JSONL records are split on "\\n" only (a CR before it is dropped): U+2028, U+2029 and U+0085 are valid inside
    JSON strings and do not end a record. Array items are named by the line they start on and their position.
    """
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some editors write
    first = _skip_space(text, 0)
    items = _array_items(text, first) if text.startswith("[", first) else _jsonl_items(text)
    examples: list[Example] = []
    problems: list[tuple[int, str]] = []
    for line, item, record in items:
        where = f"item {item}: " if item else ""
        if isinstance(record, _Invalid):
            problems.append((line, where + record.message))
            continue
        errors = _record_errors(record, input_key, output_key)
        problems.extend((line, where + message) for message in errors)
        if not errors:
            examples.append(Example(record[input_key], record[output_key], line, item))
    if problems:
        raise DatasetError(source, problems)
    if not examples:
        raise DatasetError(source, [(0, "no records")])
    return examples


def examples_from_records(
    records: Sequence[Any], input_key: str = "input", output_key: str = "output", source: str = "records"
) -> list[Example]:
    """Records handed over as Python objects (the SDK's `upload_data`), checked like a file's, named by position."""
    examples: list[Example] = []
    problems: list[tuple[int, str]] = []
    for number, record in enumerate(records, start=1):
        errors = _record_errors(record, input_key, output_key)
        problems.extend((number, message) for message in errors)
        if not errors:
            examples.append(Example(record[input_key], record[output_key], number))
    if problems or not examples:
        raise DatasetError(source, problems or [(0, "no records")], unit="record")
    return examples


@dataclass(frozen=True)
class _Invalid:
    message: str


# JSON's own whitespace (RFC 8259 section 2); str.strip() and str.splitlines() know more characters than JSON does.
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, position: int) -> int:
    match = _JSON_SPACE.match(text, position)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _unreadable(error: Exception) -> _Invalid:
    """What the json module's failures mean for a record (it raises more than JSONDecodeError)."""
    if isinstance(error, json.JSONDecodeError):
        return _Invalid(f"not valid JSON ({error.msg} at column {error.colno})")
    if isinstance(error, RecursionError):
        return _Invalid("not readable: arrays or objects nested too deeply")
    if "integer string conversion" in str(error):  # sys.get_int_max_str_digits(), 4300 by default
        return _Invalid(f"not readable: a number with more than {sys.get_int_max_str_digits()} digits")
    return _Invalid(f"not readable: {error}")


def _jsonl_items(text: str) -> Iterator[tuple[int, int, Any]]:
    for number, raw in enumerate(text.split("\n"), start=1):
        if _skip_space(raw, 0) == len(raw):
            continue  # blank line
        try:
            yield number, 0, json.loads(raw)
        except (ValueError, RecursionError) as error:
            yield number, 0, _unreadable(error)


def _array_items(text: str, start: int) -> Iterator[tuple[int, int, Any]]:
    """Items of the JSON array opening at `start`, each with its line; stops at the first syntax error."""
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    position, item = _skip_space(text, start + 1), 0
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            item += 1
            line = lines.at(position)
            try:
                record, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                yield error.lineno, item, _Invalid(f"not valid JSON ({error.msg} at column {error.colno})")
                return
            except (ValueError, RecursionError) as error:
                yield line, item, _unreadable(error)
                return
            yield line, item, record
            position = _skip_space(text, position)
            if text.startswith(",", position):
                position = _skip_space(text, position + 1)
            elif text.startswith("]", position):
                position += 1
                break
            else:
                yield lines.at(position), 0, _Invalid(f"not valid JSON (expected ',' or ']' after item {item})")
                return
    if (end := _skip_space(text, position)) != len(text):
        yield lines.at(end), 0, _Invalid("not valid JSON (extra data after the array)")


class _LineCounter:
    """1-based line of a character offset, for offsets that only grow (linear in the text, not quadratic)."""

    def __init__(self, text: str):
        self.text, self.offset, self.line = text, 0, 1

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.offset, offset)
        self.offset = offset
        return self.line


def read_question_records(path: str | Path, key: str = "input") -> list[dict[str, Any]]:
    """JSONL objects that each hold a non-empty string `key` (questions to answer; other fields are kept)."""
    records: list[dict[str, Any]] = []
    problems: list[tuple[int, str]] = []
    for line, _, record in _jsonl_items(_decode(_read(str(path)), str(path)).removeprefix("\ufeff")):
        if isinstance(record, _Invalid):
            problems.append((line, record.message))
        elif not isinstance(record, dict) or not isinstance(record.get(key), str) or not record[key].strip():
            problems.append((line, f"expected an object with a non-empty string {key!r}"))
        elif found := _SURROGATE.search(record[key]):
            problems.append((line, f"{key!r} holds a lone surrogate at character {found.start() + 1}"))
        else:
            records.append(record)
    if problems or not records:
        raise DatasetError(str(path), problems or [(0, "no records")])
    return records


def canonical_bytes(examples: Sequence[Example]) -> bytes:
    lines = (
        json.dumps({"input": e.input, "output": e.output}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for e in examples
    )
    return "".join(line + "\n" for line in lines).encode("utf-8")


def dataset_id(examples: Sequence[Example]) -> str:
    return hashlib.sha256(canonical_bytes(examples)).hexdigest()


def _read(uri: str) -> bytes:
    if is_remote(uri):
        return storage.read_bytes(uri)
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise DatasetError(uri, [(0, "file not found")])
    try:
        return path.read_bytes()
    except OSError as error:
        raise DatasetError(uri, [(0, f"cannot read the file ({error.strerror or error})")]) from None


def _decode(raw: bytes, source: str) -> str:
    """UTF-8 text, or a DatasetError naming the line and byte of the first invalid sequence."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DatasetError(source, [(line, f"not UTF-8 text ({error.reason} at byte {error.start})")]) from None


def read_examples(uri: str, input_key: str = "input", output_key: str = "output") -> list[Example]:
    return parse_records(_decode(_read(uri), uri), uri, input_key, output_key)


@dataclass(frozen=True)
class Stored:
    """Where `store_dataset` put a dataset, and what it found there."""

    id: str
    uri: str
    state: Literal["written", "present", "repaired"]
    """written: new; present: an intact copy was already there; repaired: a corrupt copy was replaced."""


def store_dataset(examples: Sequence[Example], store: str | None = None) -> Stored:
    """Store a dataset under its content address; an intact copy is never rewritten, a corrupt one is replaced.

    The canonical form is read back before anything is written, so an id is only handed out for data that
    `load_by_id` can return exactly (DatasetError otherwise).
    """
    payload = canonical_bytes(examples)
    identifier = hashlib.sha256(payload).hexdigest()
    try:
        again = parse_records(payload.decode("utf-8"), "canonical form")
    except DatasetError as error:
        raise DatasetError("dataset", [(0, f"would not read back once stored: {error}")]) from None
    if again != list(examples):
        raise DatasetError("dataset", [(0, "would not read back once stored as the same records")])
    uri = storage.join_uri(store or str(memtune_home()), DATASETS_FOLDER, f"{identifier}.jsonl")
    state: Literal["written", "repaired"] = "written"
    if storage.exists(uri):
        if hashlib.sha256(storage.read_bytes(uri)).hexdigest() == identifier:
            return Stored(identifier, uri, "present")
        log.warning("%s does not hash to its id: replacing the corrupt copy", uri)
        state = "repaired"
    storage.write_bytes(uri, payload)  # atomic locally, a single PUT on s3
    return Stored(identifier, uri, state)


def upload_examples(examples: Sequence[Example], store: str | None = None) -> str:
    """`store_dataset`, returning only the id (what `dataset: {id: ...}` takes)."""
    return store_dataset(examples, store).id


def load_by_id(identifier: str, store: str | None = None) -> list[Example]:
    """Read a stored dataset and check it still hashes to its id (upload the same data again to repair it)."""
    uri = storage.join_uri(store or str(memtune_home()), DATASETS_FOLDER, f"{identifier}.jsonl")
    raw = _read(uri)
    actual = hashlib.sha256(raw).hexdigest()
    if actual != identifier:
        message = f"content hashes to {actual}, not to its id: the stored file is corrupt (upload the data again)"
        raise DatasetError(uri, [(0, message)])
    return parse_records(_decode(raw, uri), uri)


def load_examples(ref: DatasetRef, max_examples: int | None = None) -> list[Example]:
    """The job's training pairs: from `ref.uri` (mapping inputKey/outputKey) or from the store by `ref.id`."""
    if ref.id is not None:
        examples = load_by_id(ref.id, ref.store)
    else:
        assert ref.uri is not None  # DatasetRef guarantees exactly one of uri/id
        examples = read_examples(ref.uri, ref.inputKey, ref.outputKey)
    return examples[:max_examples] if max_examples else examples


def check_lengths(examples: Sequence[Example], count_tokens: Callable[[Example], int], max_length: int) -> None:
    """Refuse records whose prompt + answer exceed `max_length` tokens, naming each line."""
    problems = []
    for example in examples:
        tokens = count_tokens(example)
        if tokens > max_length:
            where = f"item {example.item}: " if example.item else ""
            problems.append((example.line, f"{where}{tokens} tokens exceed max_length {max_length}"))
    if problems:
        raise DatasetError("dataset", problems)


@dataclass(frozen=True)
class Deduplicated:
    """One example per distinct question: what a memory can hold (one answer per question)."""

    examples: list[Example]
    """In first-appearance order, each carrying the answer of the question's *last* line."""
    repeated: int
    """Lines that repeat an earlier line's question and answer exactly (merged, nothing lost)."""
    conflicts: list[tuple[str, list[int]]]
    """(question, its lines) for questions given different answers: the last line wins, like an update."""


def deduplicate(examples: Sequence[Example]) -> Deduplicated:
    """Merge lines that ask the same question (same text after stripping); a later answer supersedes an earlier one."""
    latest: dict[str, Example] = {}
    lines: dict[str, list[Example]] = {}
    for example in examples:
        question = example.input.strip()
        latest[question] = example
        lines.setdefault(question, []).append(example)
    repeated = sum(len(group) - len({e.output for e in group}) for group in lines.values())
    conflicts = [(q, [e.line for e in group]) for q, group in lines.items() if len({e.output for e in group}) > 1]
    return Deduplicated(list(latest.values()), repeated, conflicts)
