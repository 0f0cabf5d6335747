"""Manifests that must be refused before any work: alias bombs, deep nesting, repeated keys, bad bytes, values out
of range, and credentials; each names the field or line, and never echoes a credential."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memtune.cli import app
from memtune.documents import MAX_DEPTH, MAX_MANIFEST_BYTES
from memtune.redact import redact
from memtune.spec import SpecError, load_job_file, parse_job

HEAD = "apiVersion: memtune.dev/v1alpha1\nkind: MemoryTuningJob\nmetadata: {name: j}\n"
SPEC = "spec:\n  dataset: {uri: facts.jsonl}\n  output: {uri: out}\n"
runner = CliRunner(env={"COLUMNS": "400"})


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "job.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _refused(path: Path) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_job_file(path)
    return caught.value


def _bomb(levels: int) -> str:
    """The "billion laughs": each level a list of nine aliases of the one before (9**levels strings)."""
    lines = ['    a0: &a0 "lol"']
    for level in range(1, levels + 1):
        lines.append(f"    a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines)


@pytest.mark.parametrize("levels", [6, 9, 12])
def test_alias_bomb_in_an_ignored_field_is_refused_at_once(tmp_path, levels):
    text = HEAD + SPEC + "  trainer:\n    affinity:\n" + "\n".join("  " + line for line in _bomb(levels).splitlines())
    path = _write(tmp_path, text)
    assert path.stat().st_size < 2048
    started = time.perf_counter()
    error = _refused(path)
    assert time.perf_counter() - started < 1.0
    assert "expands to more than" in str(error) and "spec.trainer.affinity" in str(error)


def test_a_small_alias_use_is_fine(tmp_path):
    text = HEAD + SPEC + "  trainer:\n    nodeSelector: &sel {gpu: h100}\n    affinity: {x: *sel, y: *sel}\n"
    assert load_job_file(_write(tmp_path, text)).spec.trainer.affinity == {"x": {"gpu": "h100"}, "y": {"gpu": "h100"}}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("  trainer:\n    affinity: &a {x: *a}\n", "contains itself"),
        ("  trainer:\n    affinity: " + "[" * 100_000 + "\n", "nested too deeply"),
        ("  trainer:\n    affinity: {a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}\n", "nested more than"),
        ("  trainer:\n    affinity: {big: " + "9" * 5000 + "}\n", "(yaml) line 8, column 21: unreadable value"),
        ("  trainer:\n    affinity: {n: 99999999999999999999}\n", "integer outside int64"),
        ("  trainer:\n    affinity: {when: 2024-01-01}\n", "spec.trainer.affinity.when: a date is not a JSON value"),
        ("  trainer:\n    affinity: {data: !!binary aGk=}\n", "a bytes is not a JSON value"),
        ("  trainer:\n    affinity: {1: x}\n", "keys must be strings"),
        ("  memory: {stopLoss: .nan}\n", "spec.memory.stopLoss"),
        ("  memory: {distanceThreshold: .inf}\n", "spec.memory.distanceThreshold"),
    ],
    ids=["recursive", "deep-100k", "deep-65", "5000-digits", "int64", "date", "binary", "int-key", "nan", "inf"],
)
def test_values_yaml_can_hold_but_a_manifest_cannot_are_refused_by_path(tmp_path, text, words):
    assert words in str(_refused(_write(tmp_path, HEAD + SPEC + text)))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            HEAD + SPEC + "  finetuneArgs: {max_steps: 5000}\n  finetuneArgs: {max_steps: 100}\n",
            "spec.finetuneArgs (line 8): key given twice (first at line 7)",
        ),
        (
            HEAD + SPEC + "  finetuneArgs: {max_steps: 5, max_steps: 6}\n",
            "max_steps (line 7): key given twice (first at line 7)",
        ),
        (HEAD + SPEC + "  output: {uri: other}\n", "spec.output (line 7): key given twice (first at line 6)"),
        (HEAD + "metadata: {name: k}\n" + SPEC, "metadata (line 4): key given twice (first at line 3)"),
    ],
    ids=["block", "inline", "output", "top-level"],
)
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, text, words):
    assert words in str(_refused(_write(tmp_path, text)))


def test_merge_keys_may_be_overridden_as_yaml_intends(tmp_path):
    text = HEAD + SPEC + "  memory:\n    <<: {batchSize: 4, seed: 1}\n    seed: 2\n"
    memory = load_job_file(_write(tmp_path, text)).spec.memory
    assert (memory.batchSize, memory.seed) == (4, 2)


def test_bytes_that_are_not_utf8_and_oversized_files_are_clear_errors(tmp_path):
    error = _refused(_write(tmp_path, (HEAD + SPEC).encode() + b"  queueName: caf\xe9\n"))
    assert "(file) line 7: not UTF-8 text" in str(error)
    error = _refused(_write(tmp_path, HEAD + SPEC + "# " + "x" * MAX_MANIFEST_BYTES + "\n"))
    assert "larger than 1048576 bytes" in str(error)
    assert "cannot read it" in str(_refused(tmp_path / "missing.yaml"))
    assert "(yaml) line 4, column" in str(_refused(_write(tmp_path, HEAD + "spec: {dataset: [}\n")))


BASE = {"metadata": {"name": "j"}, "spec": {"dataset": {"uri": "s3://b/f.jsonl"}, "output": {"uri": "s3://b/out"}}}


def _spec(**fields: object) -> dict:
    return {"metadata": BASE["metadata"], "spec": {**BASE["spec"], **fields}}


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"memory": {"seed": 2**31}}, "spec.memory.seed"),
        ({"memory": {"seed": -1}}, "spec.memory.seed"),
        ({"memory": {"expertLayers": [-1]}}, "spec.memory.expertLayers[0]"),
        ({"memory": {"expertLayers": [3, 600]}}, "spec.memory.expertLayers[1]"),
        ({"memory": {"keyLayer": 8, "expertLayers": [8, 9]}}, "keyLayer (8) must be below every expert layer"),
        ({"memory": {"keyLayer": 9999}}, "spec.memory.keyLayer"),
        ({"memory": {"distanceThreshold": 5.0}}, "spec.memory.distanceThreshold"),
        ({"memory": {"stopLoss": 1e9}}, "spec.memory.stopLoss"),
        ({"finetuneArgs": {"save_steps": 10**12}}, "spec.finetuneArgs.save_steps"),
        ({"finetuneArgs": {"max_finetuning_examples": 10**12}}, "spec.finetuneArgs.max_finetuning_examples"),
        ({"activeDeadlineSeconds": 2**40}, "spec.activeDeadlineSeconds"),
        ({"ttlSecondsAfterFinished": 2**40}, "spec.ttlSecondsAfterFinished"),
    ],
)
def test_every_range_is_checked_at_validation(fields, path):
    with pytest.raises(SpecError, match=path.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_job(_spec(**fields))


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
LEAKY = [
    ({"trainer": {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": SECRET}]}}, "spec.trainer.env[0].value"),
    ({"trainer": {"env": [{"name": "HF_TOKEN", "value": SECRET}]}}, "spec.trainer.env[0].value"),
    ({"trainer": {"env": [{"name": "db.password", "value": SECRET}]}}, "spec.trainer.env[0].value"),
    ({"trainer": {"env": [{"name": "X", "value": "AKIAIOSFODNN7EXAMPLE"}]}}, "an AWS access key id"),
    ({"trainer": {"env": [{"name": "X", "value": f"https://me:{SECRET}@h/x"}]}}, "a URI with user:password@"),
    (
        {"trainer": {"env": [{"name": "WANDB_API_KEY", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]}},
        "take it from a Secret",
    ),
    ({"dataset": {"uri": f"https://user:{SECRET}@example.com/f.jsonl"}}, "spec.dataset.uri"),
    ({"dataset": {"id": "a" * 64, "store": f"s3://KEY:{SECRET}@bucket/store"}}, "spec.dataset.store"),
    ({"output": {"uri": f"s3://KEY:{SECRET}@bucket/out"}}, "spec.output.uri"),
    ({"baseModel": f"s3://KEY:{SECRET}@bucket/model"}, "spec.baseModel"),
]


@pytest.mark.parametrize(("fields", "path"), LEAKY)
def test_credentials_in_a_spec_are_refused_without_echoing_them(fields, path):
    with pytest.raises(SpecError) as caught:
        parse_job(_spec(**fields))
    assert path in str(caught.value) or path in str(caught.value.problems)
    assert SECRET not in str(caught.value) and "AKIAIOSFODNN7EXAMPLE" not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "KEYLAYER_NOTE", "value": "s3://bucket/path@v2"},
    ],
)
def test_ordinary_environment_and_secret_references_pass(env):
    parse_job(_spec(trainer={"env": [env]}))


def test_cli_and_trainer_never_echo_a_credential(tmp_path):
    from memtune.trainer.tuning import pod

    uri = f"s3://KEY:{SECRET}@bucket/out"
    job = _write(tmp_path, HEAD + f"spec:\n  dataset: {{uri: f.jsonl}}\n  output: {{uri: '{uri}'}}\n")
    result = runner.invoke(app, ["run", str(job)])
    assert result.exit_code == 1 and "spec.output.uri" in result.output and SECRET not in result.output
    upload = runner.invoke(app, ["upload", f"s3://KEY:{SECRET}@bucket/data.jsonl"])
    assert upload.exit_code == 1 and "must not embed credentials" in upload.output and SECRET not in upload.output
    log = tmp_path / "termination-log"
    assert pod.main(["--spec", str(job), "--termination-log", str(log)]) == 1
    assert "spec.output.uri" in log.read_text() and SECRET not in log.read_text()


def test_operator_status_and_events_never_hold_a_credential():
    import datetime

    from memtune.operator.reconcile import Reconciler

    body = {
        "apiVersion": "memtune.dev/v1alpha1",
        "kind": "MemoryTuningJob",
        **_spec(output={"uri": f"s3://K:{SECRET}@b/o"}),
    }
    outcome = Reconciler(None, None, datetime.datetime.now(datetime.UTC), body).run()  # type: ignore[arg-type]
    assert outcome.status["phase"] == "Failed" and "spec.output.uri" in str(outcome.status)
    assert SECRET not in str(outcome.status) and SECRET not in str(outcome.events)


def test_redact_hides_userinfo_keys_and_this_processs_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    text = f"GET https://u:p@host/x failed; key AKIAIOSFODNN7EXAMPLE; secret {SECRET}; s3://bucket/a@b stays"
    assert redact(text) == "GET https://***@host/x failed; key ***; secret ***; s3://bucket/a@b stays"
