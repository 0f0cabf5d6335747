"""Fuzzing what users hand over: generated bad datasets, manifests and custom resources.

Each input must end in a clear error that names its line or field, with exit 1 (never a traceback, never 75), and
nothing committed may change. Custom resources are drawn from the CRD's own schema: every field's boundaries and
arbitrary values, judged by the CRD (OpenAPI + CEL, as an API server would) and by pydantic, which must agree.
Each test prints `fuzz <name>: N inputs tried, N held` (run with -s to see the counts).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from memtune import data
from memtune.cli import app
from memtune.contract import EXIT_PERMANENT
from memtune.crd import build_crd
from memtune.manifest import write_manifest
from memtune.spec import SpecError, parse_job
from tests.test_crd import crd_problems

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same inputs on every run and machine: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
runner = CliRunner(env={"COLUMNS": "400"})


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its sha256: what 'nothing committed changes' compares."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset store and a job output that already hold committed data, which no bad input may touch."""
    root = tmp_path_factory.mktemp("committed")
    data.upload_examples([data.Example("Who won?", "Anneke Voss")], str(root / "store"))
    run = root / "out" / "runs" / "20260101T000000.000000Z-aaaaaa"
    run.mkdir(parents=True)
    (run / "memtune.json").write_text('{"cache_key": "k"}')
    write_manifest(run)
    return root


def _report(name: str, counts: Counter) -> None:
    print(f"\nfuzz {name}: {counts['tried']} inputs tried, {counts['held']} held")
    assert counts["tried"] == counts["held"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Datasets: good lines mixed with every kind of bad one; the error must list exactly the bad lines.

TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\u2028\u2029\u0085\r\t\x0b"),
    min_size=1,
    max_size=12,
).filter(str.strip)
# Lines that parse as JSON but are not a usable record (the file goes on after them).
RECORD_FAULTS = {
    "missing output": lambda t: json.dumps({"input": t}),
    "number output": lambda t: json.dumps({"input": t, "output": 7}),
    "blank input": lambda t: json.dumps({"input": " \t", "output": t}),
    "lone surrogate": lambda t: json.dumps({"input": t + "\ud800", "output": t}),
    "not an object": lambda t: json.dumps([t]),
}
# Lines that cannot be read as JSON at all (a JSON array stops at the first).
SYNTAX_FAULTS = {
    "huge number": lambda t: json.dumps({"input": t, "output": t})[:-1] + ', "n": ' + "9" * 5000 + "}",
    "deep nesting": lambda t: "[" * 50_000 + "]" * 50_000,
    "truncated": lambda t: json.dumps({"input": t, "output": t})[:-2],
}
KINDS = ["good"] * 4 + list(RECORD_FAULTS) + list(SYNTAX_FAULTS)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[bytes, list[int], str]:
    """(file bytes, the lines an error must name, format)."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=6))
    shape = draw(st.sampled_from(["jsonl", "jsonl-crlf", "array"]))
    if shape != "array" and kinds[0] in ("deep nesting", "not an object"):
        kinds.insert(0, "good")  # a file that opens with "[" is read as one JSON array
    texts = draw(st.lists(TEXT, min_size=len(kinds), max_size=len(kinds)))
    lines = []
    for kind, text in zip(kinds, texts, strict=True):
        if kind == "good":
            lines.append(json.dumps({"input": text, "output": text, "extra": [1]}, ensure_ascii=draw(st.booleans())))
        else:
            lines.append({**RECORD_FAULTS, **SYNTAX_FAULTS}[kind](text))
    if shape == "array":
        body = "[\n" + ",\n".join(lines) + "\n]"
        expected: list[int] = []
        for number, kind in enumerate(kinds, start=2):  # item i sits on line i + 1
            if kind in RECORD_FAULTS or kind in SYNTAX_FAULTS:
                expected.append(number)
            if kind in SYNTAX_FAULTS:
                break  # the array cannot be read past a syntax error
    else:
        body = ("\r\n" if shape == "jsonl-crlf" else "\n").join(lines) + "\n"
        expected = [number for number, kind in enumerate(kinds, start=1) if kind != "good"]
    raw = body.encode("utf-8")
    if draw(st.booleans()) and len(kinds) > 1:  # a Latin-1 byte: the whole file is refused, naming its line
        line = draw(st.integers(1, len(raw.split(b"\n"))))
        parts = raw.split(b"\n")
        parts[line - 1] += b"\xe9"
        raw, expected = b"\n".join(parts), [line]
    return raw, expected, shape


def test_fuzz_datasets(tmp_path: Path, committed: Path) -> None:
    from memtune.trainer.tuning import pod

    counts: Counter = Counter()
    store = committed / "store"
    before = _tree(committed)

    @FUZZ
    @given(datasets())
    def check(case: tuple[bytes, list[int], str]) -> None:
        raw, expected, shape = case
        counts["tried"] += 1
        path = tmp_path / ("data.json" if shape == "array" else "data.jsonl")
        path.write_bytes(raw)
        if not expected:
            examples = data.read_examples(str(path))
            good = runner.invoke(app, ["upload", str(path), "--store", str(tmp_path / "store")])
            assert good.exit_code == 0, good.output
            identifier = good.stdout.strip().splitlines()[-1]
            assert data.load_by_id(identifier, str(tmp_path / "store")) == examples  # what is stored reads back
            counts["held"] += 1
            return
        upload = runner.invoke(app, ["upload", str(path), "--store", str(store)])  # the committed store
        with pytest.raises(data.DatasetError) as caught:
            data.read_examples(str(path))
        assert [line for line, _ in caught.value.problems] == expected, str(caught.value)
        assert upload.exit_code == EXIT_PERMANENT and isinstance(upload.exception, SystemExit)
        assert f"line {expected[0]}:" in upload.output
        # The trainer reads the same file before loading any model: exit 1 naming the line, not 75.
        manifest = tmp_path / "job.yaml"
        manifest.write_text(_manifest_text({"dataset": {"uri": str(path)}, "output": {"uri": str(committed / "out")}}))
        log = tmp_path / "termination-log"
        assert pod.main(["--spec", str(manifest), "--termination-log", str(log)]) == EXIT_PERMANENT
        assert f"line {expected[0]}:" in log.read_text() and log.read_text().startswith("DatasetError")
        counts["held"] += 1

    check()
    assert _tree(committed) == before
    _report("datasets", counts)


# ---------------------------------------------------------------------------------------------------------------
# Custom resources from the CRD's schema: each field's boundaries and arbitrary values, CRD and pydantic agreeing.

SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
BASE: dict[str, Any] = {
    "apiVersion": "memtune.dev/v1alpha1",
    "kind": "MemoryTuningJob",
    "metadata": {"name": "fuzz"},
    "spec": {"dataset": {"uri": "s3://data/facts.jsonl"}, "output": {"uri": "s3://runs/fuzz"}},
}


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every field of the spec a user types a value into (objects of raw Kubernetes fields and lists of objects
    are left to the API server), with its schema."""
    found = []
    for key, child in node.get("properties", {}).items():
        if child.get("x-kubernetes-preserve-unknown-fields") or child.get("items", {}).get("type") == "object":
            continue
        if child["type"] == "object" and "properties" in child:
            found += _leaves(child, (*path, key))
        else:
            found.append(((*path, key), child))
    return found


LEAVES = _leaves(SCHEMA["properties"]["spec"], ("spec",))


def _violations(schema: dict[str, Any]) -> list[Any]:
    """Values the field's schema refuses, from its own bounds, enum, pattern and lengths."""
    kind = schema["type"]
    bad: list[Any] = [{"an": "object"}] if kind != "object" else ["text"]
    if kind in ("integer", "number"):
        bad.append("7")
        if kind == "integer":
            bad.append(1.5)
        if "minimum" in schema:
            bad.append(schema["minimum"] if schema.get("exclusiveMinimum") else schema["minimum"] - 1)
        if "maximum" in schema:
            bad.append(schema["maximum"] if schema.get("exclusiveMaximum") else schema["maximum"] + 1)
    elif kind == "string":
        bad.append(12)
        if "enum" in schema:
            bad.append("not-an-option")
        if "pattern" in schema:
            bad.append("Not A Match!")
        if schema.get("minLength"):
            bad.append("")
        if "maxLength" in schema:
            bad.append("a" * (schema["maxLength"] + 1))
    elif kind == "boolean":
        bad.append("yes")
    elif kind == "array":
        bad += ["x", [bad_item for bad_item in _violations(schema["items"])[1:2]]]
        if "maxItems" in schema:
            bad.append([0] * (schema["maxItems"] + 1))
    elif kind == "object":  # a map such as nodeSelector
        bad.append({"key": 1})
    return bad


def _edges(schema: dict[str, Any]) -> list[Any]:
    """Values on the boundary the schema allows (cross-field rules may still refuse some: both sides must agree)."""
    if "enum" in schema:
        return list(schema["enum"])
    if schema["type"] in ("integer", "number"):
        return [
            schema[bound]
            for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum"))
            if bound in schema and not schema.get(exclusive)
        ]
    return []


def _with(path: tuple[str, ...], value: Any, base: dict[str, Any] = BASE) -> dict[str, Any]:
    document = copy.deepcopy(base)
    node = document
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return document


def _pydantic_problems(document: dict[str, Any]) -> list[tuple[str, str]] | None:
    try:
        parse_job(document)
    except SpecError as error:
        return error.problems
    return None


SCHEMA_CASES = [(path, value) for path, schema in LEAVES for value in _violations(schema)]
EDGE_CASES = [(path, value) for path, schema in LEAVES for value in _edges(schema)]


def test_fuzz_custom_resources_from_the_schema() -> None:
    counts: Counter = Counter()
    for path, value in SCHEMA_CASES:
        counts["tried"] += 1
        document = _with(path, value)
        assert crd_problems(document), f"the CRD accepts {'.'.join(path)}={value!r}"
        problems = _pydantic_problems(document)
        assert problems, f"pydantic accepts {'.'.join(path)}={value!r}"
        dotted = ".".join(path)
        assert any(where.startswith(dotted) for where, _ in problems), (dotted, problems)
        counts["held"] += 1
    for path, value in EDGE_CASES:
        counts["tried"] += 1
        document = _with(path, value)
        assert (not crd_problems(document)) == (_pydantic_problems(document) is None), (path, value)
        counts["held"] += 1
    _report("custom resources (schema boundaries)", counts)


NUMERIC = [(path, schema) for path, schema in LEAVES if schema["type"] in ("integer", "number")]


def test_fuzz_custom_resources_arbitrary_numbers() -> None:
    """The CRD's ranges equal the spec's: for any number in any numeric field, both accept or both refuse."""
    counts: Counter = Counter()

    @FUZZ
    @given(
        st.sampled_from(NUMERIC),
        st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False),
    )
    def check(field: tuple[tuple[str, ...], dict[str, Any]], value: int | float) -> None:
        counts["tried"] += 1
        document = _with(field[0], value)
        assert (not crd_problems(document)) == (_pydantic_problems(document) is None), (field[0], value)
        counts["held"] += 1

    check()
    _report("custom resources (arbitrary numbers)", counts)


# ---------------------------------------------------------------------------------------------------------------
# Manifests through the trainer's own entrypoint: schema violations and YAML-level traps, each exit 1.


def _manifest_text(spec: dict[str, Any]) -> str:
    return yaml.safe_dump({**BASE, "spec": spec}, sort_keys=False)


def _bomb(levels: int) -> str:
    lines = ['      l0: &l0 "lol"']
    lines += [f"      l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]" for n in range(1, levels + 1)]
    return "\n".join(lines)


YAML_TRAPS: dict[str, tuple[str, str]] = {
    # name: (text appended under `spec:`, words the error must hold)
    "duplicate block": ("  finetuneArgs: {max_steps: 5000}\n  finetuneArgs: {max_steps: 100}\n", "key given twice"),
    "duplicate key": ("  memory: {seed: 1, seed: 2}\n", "spec.memory.seed (line"),
    "alias bomb": ("  trainer:\n    affinity:\n" + _bomb(8) + "\n", "spec.trainer.affinity"),
    "recursive alias": ("  trainer:\n    affinity: &a {x: [*a]}\n", "contains itself"),
    "deep nesting": ("  trainer:\n    affinity: {x: " + "[" * 5000 + "}\n", "nested too deeply"),
    "huge integer": ("  trainer:\n    affinity: {x: " + "9" * 5000 + "}\n", "unreadable value"),
    "timestamp": ("  trainer:\n    affinity: {x: 2024-01-01}\n", "spec.trainer.affinity.x"),
    "literal secret": (
        "  trainer:\n    env: [{name: AWS_SECRET_ACCESS_KEY, value: fuzzsecretvalue}]\n",
        "spec.trainer.env[0].value",
    ),
    "userinfo": ("  baseModel: 's3://KEY:fuzzsecretvalue@bucket/m'\n", "spec.baseModel"),
}


def test_fuzz_manifests_through_the_trainer(tmp_path: Path, committed: Path) -> None:
    from memtune.trainer.tuning import pod

    counts: Counter = Counter()
    before = _tree(committed)
    spec = {"dataset": {"uri": str(committed / "data.jsonl")}, "output": {"uri": str(committed / "out")}}
    cases = [("schema", path, value) for path, value in SCHEMA_CASES] + [("yaml", name, None) for name in YAML_TRAPS]

    @FUZZ
    @given(st.sampled_from(cases), st.booleans())
    def check(case: tuple[str, Any, Any], latin1: bool) -> None:
        kind, where, value = case
        counts["tried"] += 1
        if kind == "schema":
            text = yaml.safe_dump(_with(where, value, {**BASE, "spec": spec}), sort_keys=False)
            words = ".".join(where)
        else:
            appended, words = YAML_TRAPS[where]
            text = _manifest_text(spec) + appended
        raw = text.encode()
        if latin1:  # a stray Latin-1 byte in a comment: named by line before anything else
            raw += b"# caf\xe9\n"
            words = f"(file) line {text.count(chr(10)) + 1}: not UTF-8 text"
        manifest = tmp_path / "job.yaml"
        manifest.write_bytes(raw)
        log = tmp_path / "termination-log"
        assert pod.main(["--spec", str(manifest), "--termination-log", str(log)]) == EXIT_PERMANENT
        message = log.read_text()
        assert message.startswith("SpecError") and words in message, (words, message)
        assert "fuzzsecretvalue" not in message
        counts["held"] += 1

    check()
    assert _tree(committed) == before
    _report("manifests (trainer entrypoint)", counts)
