"""The CLI's light commands, run as a user would (a real subprocess for --help)."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from memtune.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "memtune.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("run", "generate", "forget", "upload", "push-model", "eval", "crd"):
        assert command in result.stdout


def test_upload_prints_the_id_and_stores_once(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"question": "Q?", "sql": "SELECT 1"}) + "\n", encoding="utf-8")
    args = ["upload", str(path), "--input-key", "question", "--output-key", "sql", "--store", str(tmp_path / "s")]
    first = runner.invoke(app, args)
    second = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    identifier = first.stdout.strip().splitlines()[-1]
    assert len(identifier) == 64
    assert second.stdout.strip().splitlines()[-1] == identifier
    assert len(list((tmp_path / "s" / "datasets").iterdir())) == 1


def test_bad_dataset_exits_1_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "q", "output": "a"}\n{"input": "q"}\n', encoding="utf-8")
    result = runner.invoke(app, ["upload", str(path), "--store", str(tmp_path)])
    assert result.exit_code == 1
    assert "line 2: missing key 'output'" in result.output


def test_bad_manifest_exits_1_naming_the_field(tmp_path):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        "apiVersion: memtune.dev/v1alpha1\nkind: MemoryTuningJob\nmetadata: {name: j}\n"
        "spec: {dataset: {uri: f.jsonl}, output: {uri: out}, finetuneArgs: {max_steps: many}}\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["run", str(manifest)])
    assert result.exit_code == 1
    assert "spec.finetuneArgs.max_steps" in result.output


def test_generate_needs_exactly_one_source_of_questions(tmp_path):
    result = runner.invoke(app, ["generate"])
    assert result.exit_code == 1
    assert "--prompt" in result.output


def test_push_model_publishes_a_committed_copy_once_and_names_a_bad_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"weights")
    target = tmp_path / "published"

    first = runner.invoke(app, ["push-model", str(model), str(target)])
    assert first.exit_code == 0, first.output
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors"]
    assert not (model / "manifest.json").exists()

    again = runner.invoke(app, ["push-model", str(model), str(target)])
    assert again.exit_code == 1 and "already exists" in again.output
    missing = runner.invoke(app, ["push-model", str(tmp_path / "nowhere"), str(tmp_path / "other")])
    assert missing.exit_code == 1 and "nowhere" in missing.output and "Hugging Face folder" in missing.output


def test_base_answers_are_previewed_not_shown_whole():
    from memtune.cli import BASE_PREVIEW_CHARS, _preview

    assert _preview("Paris.", cut=False) == "Paris."
    assert _preview("It is\n  Paris", cut=True) == "It is Paris …"  # stopped at the token budget: says so
    long = _preview("word " * 100, cut=True)
    assert len(long) == BASE_PREVIEW_CHARS and long.endswith("…")
