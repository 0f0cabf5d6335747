"""`python -m memtune.trainer` as a pod runs it: the contract's progress lines, result, exit codes, and torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memtune.contract import EXIT_PERMANENT, RECALL_METRIC
from memtune.spec import SpecError
from memtune.trainer.tuning.distributed import RankGroup, group_from_env
from memtune.trainer.tuning.pod import main
from tests.distributed.conftest import job_writer, subprocess_env
from tests.distributed.helpers import run_trainer


@pytest.fixture(scope="module")
def single(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """One process training the tiny model into a local output (shared: two tests read it)."""
    folder = tmp_path_factory.mktemp("single")
    spec = job_writer(tiny_model, folder)(str(folder / "out"))
    return folder / "out", run_trainer(spec, subprocess_env(folder), folder / "termination.log")


def test_one_process_reports_progress_and_result_in_the_contract_shape(single) -> None:
    output, outcome = single
    assert outcome.code == 0, outcome.stderr
    result = outcome.result
    assert set(result) == {"artifactsUri", "metrics"}
    assert set(result["metrics"]) == {RECALL_METRIC, "final_loss", "steps", "unlearned"}
    assert result["metrics"]["unlearned"] == 0
    assert Path(result["artifactsUri"]).parent == output / "runs"
    assert (Path(result["artifactsUri"]) / "manifest.json").is_file()
    assert result["metrics"][RECALL_METRIC] == 1.0
    steps = [line["step"] for line in outcome.progress]
    assert steps == list(range(1, result["metrics"]["steps"] + 1))
    assert all(set(line) == {"step", "max_steps", "loss"} and line["max_steps"] == 40 for line in outcome.progress)
    assert len(outcome.message.encode()) <= 4096


def test_torchrun_two_ranks_recalls_as_one_process(single, make_job, trainer_env, tmp_path: Path) -> None:
    _, alone = single
    outcome = run_trainer(make_job(str(tmp_path / "pair")), trainer_env, tmp_path / "pair.log", ranks=2)
    assert outcome.code == 0, outcome.stderr
    assert outcome.result["metrics"][RECALL_METRIC] == alone.result["metrics"][RECALL_METRIC]
    # Only rank 0 reports: one line per step, not one per rank.
    assert [line["step"] for line in outcome.progress] == list(range(1, outcome.result["metrics"]["steps"] + 1))
    assert len(list((tmp_path / "pair" / "runs").iterdir())) == 1


def test_a_bad_spec_exits_permanent_naming_the_field(make_job, trainer_env, tmp_path: Path) -> None:
    spec = make_job(str(tmp_path / "out"), max_steps=0)
    outcome = run_trainer(spec, trainer_env, tmp_path / "bad.log")
    assert outcome.code == EXIT_PERMANENT
    assert "spec.finetuneArgs.max_steps" in outcome.message
    assert outcome.progress == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"baseModel": "/nonexistent/model"}, "ModelError"),
        ({"dataset": {"uri": "/nonexistent/facts.jsonl"}}, "DatasetError"),
    ],
)
def test_missing_inputs_exit_permanent(make_job, tmp_path: Path, change: dict, expected: str) -> None:
    spec = make_job(str(tmp_path / "out"))
    document = yaml.safe_load(spec.read_text())
    document["spec"].update(change)
    spec.write_text(yaml.safe_dump(document))
    log = tmp_path / "termination.log"
    assert main(["--spec", str(spec), "--termination-log", str(log)]) == EXIT_PERMANENT
    assert log.read_text().startswith(expected)


def test_a_missing_bucket_exits_permanent(s3_env, make_job, tmp_path: Path) -> None:
    log = tmp_path / "termination.log"
    spec = make_job("s3://no-such-bucket-memtune/out")
    assert main(["--spec", str(spec), "--termination-log", str(log)]) == EXIT_PERMANENT
    assert "no-such-bucket-memtune" in log.read_text()


def test_rejected_credentials_exit_permanent_without_echoing_them(
    s3_env, make_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_job(f"{s3_env.make_bucket()}/out")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    log = tmp_path / "termination.log"
    assert main(["--spec", str(spec), "--termination-log", str(log)]) == EXIT_PERMANENT
    assert "access denied" in log.read_text() and "wrong-secret-value" not in log.read_text()


def test_the_pytorchjob_environment_is_read_and_checked() -> None:
    env = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "m", "MASTER_PORT": "23456"}
    assert group_from_env(env) == RankGroup(rank=2, world_size=4, local_rank=0)
    assert group_from_env({}) == RankGroup()
    with pytest.raises(SpecError) as error:  # every problem at once
        group_from_env({"WORLD_SIZE": "2", "RANK": "5"})
    assert [field for field, _ in error.value.problems] == ["RANK", "MASTER_ADDR", "MASTER_PORT"]
    with pytest.raises(SpecError, match="WORLD_SIZE: must be an integer"):
        group_from_env({"WORLD_SIZE": "two"})
