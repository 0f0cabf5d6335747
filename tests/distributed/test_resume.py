"""A run stopped after a checkpoint resumes from it and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memtune.spec import load_job_file
from memtune.trainer.tuning.checkpoint import INDEX_NAME, checkpoint_uri
from memtune.trainer.tuning.job import run_job
from memtune.trainer.tuning.train import StepReport
from tests.distributed.helpers import kill_when, run_trainer

STOP_AT = 12  # past the checkpoint of step 10 (save_steps 5), before the end


class Stop(Exception):
    """Stands in for a killed pod."""


def _stop_at(step: int):
    def on_step(report: StepReport) -> None:
        if report.step == step:
            raise Stop

    return on_step


def _bank(run_dir: str) -> dict[str, torch.Tensor]:
    [shard] = (Path(run_dir) / "experts").iterdir()
    return load_file(shard)


def test_a_stopped_run_resumes_and_matches_an_uninterrupted_one(make_job, tmp_path: Path) -> None:
    reference = run_job(load_job_file(make_job(str(tmp_path / "whole"), name="whole")), show_progress=False)

    job = load_job_file(make_job(str(tmp_path / "stopped"), name="stopped"))
    with pytest.raises(Stop):
        run_job(job, show_progress=False, on_step=_stop_at(STOP_AT))
    [folder] = (tmp_path / "stopped" / "checkpoints").iterdir()
    assert (folder / INDEX_NAME).is_file() and not (tmp_path / "stopped" / "runs").exists()

    seen: list[int] = []
    resumed = run_job(job, show_progress=False, on_step=lambda report: seen.append(report.step))
    assert seen[0] == 11  # continued after the step-10 checkpoint instead of starting over
    assert (resumed.steps, resumed.recall, resumed.final_loss) == (
        reference.steps,
        reference.recall,
        reference.final_loss,
    )
    for name, tensor in _bank(reference.run_dir).items():
        assert torch.equal(_bank(resumed.run_dir)[name], tensor), name
    assert not Path(checkpoint_uri(str(tmp_path / "stopped"), folder.name)).exists()  # superseded by the run


def test_a_torn_checkpoint_is_not_trained_on_and_does_not_block_the_job(
    make_job, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = load_job_file(make_job(str(tmp_path / "out")))
    with pytest.raises(Stop):
        run_job(job, show_progress=False, on_step=_stop_at(6))
    [folder] = (tmp_path / "out" / "checkpoints").iterdir()
    [slot] = folder.glob("state-*.safetensors")
    slot.write_bytes(slot.read_bytes()[:-10])
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="memtune.trainer.tuning.checkpoint"):
        summary = run_job(job, show_progress=False, on_step=lambda report: seen.append(report.step))
    assert seen[0] == 1  # started over: nothing of the torn slot was loaded
    assert "damaged checkpoint" in caplog.text and "sha256" in caplog.text
    assert summary.steps > 0 and not folder.exists()  # trained, committed, and the torn checkpoint is gone


def test_a_killed_two_rank_run_resumes_in_one_process(make_job, trainer_env, tmp_path: Path) -> None:
    # stopLoss 0: every one of max_steps runs, so the kill lands mid-training.
    spec = make_job(str(tmp_path / "out"), memory={"stopLoss": 0.0}, max_steps=200, save_steps=20)
    kill_when(spec, trainer_env, ranks=2, pattern=tmp_path / "out" / "checkpoints" / "*" / INDEX_NAME)

    outcome = run_trainer(spec, trainer_env, tmp_path / "resumed.log")
    assert outcome.code == 0, outcome.stderr
    first = outcome.progress[0]["step"]
    assert first > 1 and (first - 1) % 20 == 0  # continued after a checkpoint of the killed pair
    assert outcome.result["metrics"]["steps"] == 200
