"""Datasets: `{"input", "output"}` pairs from JSONL or JSON arrays, validated line by line, stored by content.

A dataset's id is the sha256 of its canonical form: one compact JSON object per record, in order, with only
`input` and `output`, keys sorted, UTF-8, each line ending in a newline. A JSON array and the JSONL of the same
records therefore get the same id, and the stored file `{store}/datasets/{id}.jsonl` can be checked against
its own name when it is read back (on this machine or on a cluster).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memtune import storage
from memtune.spec import DatasetRef, is_remote

DATASETS_FOLDER = "datasets"


def memtune_home() -> Path:
    """Root of memtune's local caches (converted models, uploaded datasets, fetched runs)."""
    return Path(os.environ.get("MEMTUNE_HOME") or "~/.cache/memtune").expanduser()


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    line: int = field(default=0, compare=False)  # 1-based line (JSONL) or item (JSON array) in the source


class DatasetError(ValueError):
    """A dataset cannot be used. `problems` holds one `(line, message)` per bad record (line 0: whole file)."""

    def __init__(self, source: str, problems: list[tuple[int, str]]):
        self.source = source
        self.problems = problems
        shown = problems[:50]
        lines = "\n".join(f"  - line {line}: {message}" if line else f"  - {message}" for line, message in shown)
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{source}: {len(problems)} bad record{'s' * (len(problems) != 1)}:\n{lines}{more}")


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
    return errors


def parse_records(text: str, source: str, input_key: str = "input", output_key: str = "output") -> list[Example]:
    """Parse JSONL or a JSON array; report every bad line at once. Extra keys in a record are ignored."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(source, [(error.lineno, f"not valid JSON: {error.msg}")]) from None
        numbered: Iterable[tuple[int, Any]] = enumerate(items, start=1)
    else:
        numbered = _jsonl_items(text)
    examples: list[Example] = []
    problems: list[tuple[int, str]] = []
    for line, record in numbered:
        if isinstance(record, _Invalid):
            problems.append((line, record.message))
            continue
        errors = _record_errors(record, input_key, output_key)
        problems.extend((line, message) for message in errors)
        if not errors:
            examples.append(Example(record[input_key], record[output_key], line))
    if problems:
        raise DatasetError(source, problems)
    if not examples:
        raise DatasetError(source, [(0, "no records")])
    return examples


@dataclass(frozen=True)
class _Invalid:
    message: str


def _jsonl_items(text: str) -> Iterable[tuple[int, Any]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as error:
            yield number, _Invalid(f"not valid JSON ({error.msg} at column {error.colno})")


def read_question_records(path: str | Path, key: str = "input") -> list[dict[str, Any]]:
    """JSONL objects that each hold a non-empty string `key` (questions to answer; other fields are kept)."""
    records: list[dict[str, Any]] = []
    problems: list[tuple[int, str]] = []
    for line, record in _jsonl_items(Path(path).read_text(encoding="utf-8")):
        if isinstance(record, _Invalid):
            problems.append((line, record.message))
        elif not isinstance(record, dict) or not isinstance(record.get(key), str) or not record[key].strip():
            problems.append((line, f"expected an object with a non-empty string {key!r}"))
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
    return path.read_bytes()


def read_examples(uri: str, input_key: str = "input", output_key: str = "output") -> list[Example]:
    raw = _read(uri)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(uri, [(0, f"not UTF-8 text ({error.reason} at byte {error.start})")]) from None
    return parse_records(text, uri, input_key, output_key)


def upload_examples(examples: Sequence[Example], store: str | None = None) -> str:
    """Store a dataset under its content address; the same data is written only once. Returns the id."""
    root = store or str(memtune_home())
    identifier = dataset_id(examples)
    target = storage.join_uri(root, DATASETS_FOLDER, f"{identifier}.jsonl")
    if not storage.exists(target):
        storage.write_bytes(target, canonical_bytes(examples))  # atomic locally, a single PUT on s3
    return identifier


def load_by_id(identifier: str, store: str | None = None) -> list[Example]:
    """Read a stored dataset and check it still hashes to its id."""
    uri = storage.join_uri(store or str(memtune_home()), DATASETS_FOLDER, f"{identifier}.jsonl")
    raw = _read(uri)
    actual = hashlib.sha256(raw).hexdigest()
    if actual != identifier:
        raise DatasetError(uri, [(0, f"content hashes to {actual}, not to its id: the stored file is corrupt")])
    return parse_records(raw.decode("utf-8"), uri)


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
            problems.append((example.line, f"{tokens} tokens exceed max_length {max_length}"))
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
