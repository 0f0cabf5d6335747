"""Object storage outputs against a real S3 server (SeaweedFS): publish, reuse, load back, and a crash mid-upload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtune import storage
from memtune.contract import EXIT_RETRYABLE, RECALL_METRIC
from memtune.manifest import MANIFEST_NAME, IntegrityError
from memtune.spec import ModelError, load_job_file
from memtune.trainer.mome.base import folder_sha256, publish_model, resolve_model_path
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.job import run_job
from memtune.trainer.tuning.pod import main
from tests.distributed.conftest import FACTS

QUESTIONS = [json.loads(line)["input"] for line in FACTS.read_text().splitlines()]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEMTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEMTUNE_SCRATCH", str(tmp_path / "scratch"))
    return tmp_path / "home"


def _answers(model_ref: str) -> list[str]:
    model = MemoryModel.load(model_ref)
    try:
        return [answer.output for answer in model.generate(QUESTIONS, max_new_tokens=8)]
    finally:
        model.close()


def test_a_job_writes_to_s3_and_loads_back_answering_the_same(s3_env, home, make_job, tmp_path: Path) -> None:
    output = f"{s3_env.make_bucket()}/facts"
    log = tmp_path / "termination.log"
    assert main(["--spec", str(make_job(output)), "--termination-log", str(log)]) == 0
    result = json.loads(log.read_text())
    assert result["artifactsUri"] == storage.latest_committed_run(output)
    assert result["metrics"][RECALL_METRIC] == 1.0
    # checkpoints were written every save_steps; the committed run superseded and deleted them
    checkpoints = output.removeprefix("s3://") + "/checkpoints"
    assert s3_env.filesystem().find(checkpoints) in ([], [checkpoints])  # SeaweedFS may keep the empty folder

    local = run_job(load_job_file(make_job(str(tmp_path / "local"), name="local")), show_progress=False)
    assert _answers(output) == _answers(local.run_dir)
    assert list((home / "runs-cache").iterdir())  # fetched, verified copy

    again = run_job(load_job_file(make_job(output)), show_progress=False)  # same inputs: the committed run
    assert again.reused and again.run_dir == result["artifactsUri"]


def test_a_server_killed_mid_upload_leaves_no_manifest_and_exits_retryable(
    s3_env, home, make_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "RETRY_BASE_DELAY_S", 0.01)
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY_S", 0.05)
    output = f"{s3_env.make_bucket()}/facts"
    publish = storage.publish_folder
    uploaded: list[str] = []

    def kill_after_first_file(name: str) -> None:
        uploaded.append(name)
        if len(uploaded) == 1:
            s3_env.kill()

    monkeypatch.setattr(
        storage, "publish_folder", lambda folder, uri: publish(folder, uri, on_uploaded=kill_after_first_file)
    )
    log = tmp_path / "termination.log"
    try:
        assert main(["--spec", str(make_job(output)), "--termination-log", str(log)]) == EXIT_RETRYABLE
    finally:
        s3_env.start()
    assert log.read_text().startswith("StorageError") and "still failing" in log.read_text()
    assert uploaded and storage.latest_committed_run(output) is None
    leftovers = s3_env.filesystem().find(output.removeprefix("s3://") + "/runs")
    assert leftovers and not any(path.endswith(MANIFEST_NAME) for path in leftovers)


def test_a_base_model_pushed_to_s3_trains_and_loads_with_its_checksums_verified(
    s3_env, home, make_job, tiny_model: Path, tmp_path: Path
) -> None:
    model_uri = f"{s3_env.make_bucket()}/models/tiny"
    manifest = publish_model(str(tiny_model), model_uri)
    assert manifest["model"]["sha256"] == folder_sha256(tiny_model)
    assert not (tiny_model / MANIFEST_NAME).exists()  # the user's folder is left as it was

    job = load_job_file(make_job(str(tmp_path / "out")))
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"baseModel": model_uri})})
    summary = run_job(job, show_progress=False)
    assert summary.recall == 1.0
    assert list((tmp_path / "scratch" / "models-cache").glob("tiny-*"))  # a pod's home is read-only: into scratch
    model = MemoryModel.load(str(summary.run_dir))  # the run names the s3 model: fetched copy, verified
    try:
        assert model.base.sha256 == folder_sha256(tiny_model)
    finally:
        model.close()

    with pytest.raises(ModelError, match="push-model"):  # a bare upload without a manifest is refused
        resolve_model_path(f"{s3_env.make_bucket()}/models/none")

    tampered = f"{s3_env.make_bucket()}/models/tampered"
    publish_model(str(tiny_model), tampered)
    s3_env.filesystem().pipe_file(tampered.removeprefix("s3://") + "/config.json", b"{}")
    with pytest.raises(IntegrityError, match=r"config\.json"):
        resolve_model_path(tampered)
    assert not list((tmp_path / "scratch" / "models-cache").glob("tampered-*"))  # nothing half-verified is left
