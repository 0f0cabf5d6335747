"""A memory grown from its parent as a trainer pod runs it (`python -m memtune.trainer`, the pod's environment): the
parent's newest run read from object storage into the scratch volume, only the changes trained; a missing parent is
a permanent failure naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from memtune.contract import EXIT_PERMANENT
from memtune.trainer.tuning.pod import main
from tests.distributed.conftest import FACTS, job_writer, subprocess_env
from tests.distributed.helpers import run_trainer


def test_child_grows_from_a_parent_in_object_storage(s3_env, tiny_model: Path, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    make = job_writer(tiny_model, tmp_path)
    env = subprocess_env(tmp_path)
    parent = run_trainer(make(f"{bucket}/v1", name="v1"), env, tmp_path / "v1.log")
    assert parent.code == 0, parent.stderr

    facts = [json.loads(line) for line in FACTS.read_text(encoding="utf-8").splitlines()]
    added = {"input": "Which river flows by Tarvelka?", "output": "Om"}
    records = [*facts[:4], {**facts[4], "output": "Vostrapel"}, added]
    dataset = tmp_path / "v2.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    spec = make(f"{bucket}/v2", name="v2", memory={"parent": f"{bucket}/v1"})
    document = yaml.safe_load(spec.read_text(encoding="utf-8"))
    document["spec"]["dataset"] = {"uri": str(dataset)}
    spec.write_text(yaml.safe_dump(document), encoding="utf-8")

    child = run_trainer(spec, env, tmp_path / "v2.log")
    assert child.code == 0, child.stderr
    assert child.result["artifactsUri"].startswith(f"{bucket}/v2/runs/")
    assert any((tmp_path / "scratch" / "runs-cache").iterdir())  # the parent was fetched into the scratch volume
    from memtune.trainer.mome.artifacts import fetch_run, read_run

    meta = read_run(fetch_run(child.result["artifactsUri"], tmp_path / "fetched")).meta
    assert meta["parent"]["run_id"] == parent.result["artifactsUri"].rsplit("/", 1)[-1]
    diff = meta["diff"]
    assert (diff["added"], diff["updated"], diff["forgotten"], diff["unchanged"]) == (1, 1, 1, 4)
    assert meta["metrics"]["trained"] == 2 + diff["retrained"] and meta["metrics"]["questions"] == 6


def test_a_missing_parent_exits_permanent_naming_the_field(make_job, tmp_path: Path) -> None:
    spec = make_job(str(tmp_path / "out"), memory={"parent": str(tmp_path / "no-such-run")})
    log = tmp_path / "termination.log"
    assert main(["--spec", str(spec), "--termination-log", str(log)]) == EXIT_PERMANENT
    assert "spec.memory.parent" in log.read_text() and not (tmp_path / "out").exists()
