"""A job's parent memory checked before any model loads (issue 15): a missing or damaged parent exits 1 naming
spec.memory.parent and writes nothing; the field travels through manifests, the SDK and the cache key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from memtune import MemoryTuner
from memtune.cli import app
from memtune.manifest import write_manifest
from memtune.spec import SpecError, local_paths_in, parse_job, resolve_local_paths
from memtune.trainer.mome.artifacts import RUN_FORMAT
from memtune.trainer.tuning.incremental import Fact, facts_bytes
from memtune.trainer.tuning.job import cache_key

runner = CliRunner()
FACTS = [{"input": "Who founded Tarvelka?", "output": "Ilse Marrow"}]


def job_document(parent: str, dataset: str = "facts.jsonl", output: str = "out", **memory: object) -> dict:
    return {
        "apiVersion": "memtune.dev/v1alpha1",
        "kind": "MemoryTuningJob",
        "metadata": {"name": "grown"},
        "spec": {
            "dataset": {"uri": dataset},
            "finetuneArgs": {"max_steps": 5, "index_method": "IndexFlatL2"},
            "memory": {"parent": parent, **memory},
            "output": {"uri": output},
        },
    }


def write_job(folder: Path, parent: str) -> Path:
    (folder / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FACTS), encoding="utf-8")
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job_document(parent)), encoding="utf-8")
    return path


def committed_run(folder: Path) -> Path:
    """A committed run folder as far as open_parent reads one before the model loads (metadata, facts, manifest)."""
    folder.mkdir(parents=True)
    meta = {"run_format": RUN_FORMAT, "base_model": {"id": "smollm2-135m-instruct", "sha256": "0" * 64}}
    (folder / "memtune.json").write_text(json.dumps(meta), encoding="utf-8")
    (folder / "facts.jsonl").write_bytes(facts_bytes([Fact(FACTS[0]["input"], "Odo Marrow", True)]))
    write_manifest(folder, {"run_id": folder.name})
    return folder


def test_missing_parent_exits_1_naming_the_field_before_anything_is_written(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(write_job(tmp_path, "runs/nowhere"))])
    assert result.exit_code == 1, result.output
    assert "spec.memory.parent" in result.output and "nowhere" in result.output
    assert not (tmp_path / "out").exists()


def test_parent_failing_its_checksums_exits_1_before_anything_is_written(tmp_path: Path) -> None:
    run = committed_run(tmp_path / "parent-run")
    (run / "facts.jsonl").write_bytes(facts_bytes([Fact(FACTS[0]["input"], "Someone Else", True)]))
    result = runner.invoke(app, ["run", str(write_job(tmp_path, "parent-run"))])
    assert result.exit_code == 1, result.output
    assert "spec.memory.parent" in result.output and "does not match the manifest" in result.output
    assert not (tmp_path / "out").exists()


def test_parent_resolves_against_the_manifest_folder_and_is_a_local_path(tmp_path: Path) -> None:
    job = resolve_local_paths(parse_job(job_document("../v1")), tmp_path / "jobs")
    assert job.spec.memory.parent == str(tmp_path / "v1")
    assert ("spec.memory.parent", job.spec.memory.parent) in local_paths_in(job.spec)
    remote = parse_job(job_document("s3://bucket/jobs/v1", dataset="s3://bucket/d.jsonl", output="s3://bucket/v2"))
    assert local_paths_in(remote.spec) == []


def test_append_needs_a_parent_and_a_parent_holds_no_credentials() -> None:
    document = job_document("runs/v1", mode="append")
    del document["spec"]["memory"]["parent"]
    with pytest.raises(SpecError, match=r"spec\.memory.*set memory\.parent"):
        parse_job(document)
    with pytest.raises(SpecError, match=r"spec\.memory\.parent"):
        parse_job(job_document("s3://key:secret@bucket/jobs/v1"))


def test_cache_key_covers_the_parents_identity_and_mode_but_not_its_name() -> None:
    plain = parse_job({**job_document("x"), "spec": {**job_document("x")["spec"], "memory": {}}})
    grown, appended = parse_job(job_document("runs/v1")), parse_job(job_document("runs/v1", mode="append"))
    renamed = parse_job(job_document("s3://bucket/jobs/v1"))
    base, data = "b" * 64, "d" * 64
    assert cache_key(base, data, grown, "p" * 64) == cache_key(base, data, renamed, "p" * 64)
    assert cache_key(base, data, grown, "p" * 64) != cache_key(base, data, grown, "q" * 64)
    assert cache_key(base, data, grown, "p" * 64) != cache_key(base, data, appended, "p" * 64)
    assert cache_key(base, data, plain) != cache_key(base, data, grown, "p" * 64)


def test_sdk_train_arguments_name_the_parent(tmp_path: Path) -> None:
    tuner = MemoryTuner(store=str(tmp_path / "store"), output_root=str(tmp_path / "jobs"))
    job = tuner.build_job(FACTS, {"max_steps": 7}, parent="s3://bucket/jobs/v1", mode="append")
    assert job.spec.memory.parent == "s3://bucket/jobs/v1" and job.spec.memory.mode == "append"
    with pytest.raises(SpecError, match=r"set memory\.parent"):
        tuner.build_job(FACTS, mode="append")
