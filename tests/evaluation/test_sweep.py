"""Learning-rate sweep pieces that need no engine: rate parsing, the trial job, picking the best, the report."""

from __future__ import annotations

import json
import math

import pytest

from memtune.evaluation.sweep import Trial, best_trial, parse_rates, trial_job, write_sweep_report
from memtune.spec import parse_job

JOB = parse_job(
    {
        "metadata": {"name": "facts"},
        "spec": {
            "dataset": {"uri": "facts.jsonl"},
            "output": {"uri": "runs/facts"},
            "finetuneArgs": {"max_steps": 500, "index_method": "IndexFlatL2", "r_value": 8},
            "memory": {"seed": 3},
        },
    }
)


def trial(rate, loss, recall=None, curve=(1.0, 0.5)):
    return Trial(rate, loss, recall, len(curve), 1.0, list(curve), f"runs/lr-{rate:g}")


def test_parse_rates_sorts_and_names_every_bad_item():
    assert parse_rates("9e-4, 3e-4,9e-4") == [3e-4, 9e-4]
    with pytest.raises(ValueError, match=r"'fast' is not a number; 2 is outside \(0, 1\]; nan is outside"):
        parse_rates("fast,2,nan,1e-3")


def test_trial_job_changes_only_the_swept_fields(tmp_path):
    job = trial_job(JOB, 3e-3, 60, 20, tmp_path)
    args = job.spec.finetuneArgs
    assert (args.learning_rate, args.max_steps, args.max_finetuning_examples) == (3e-3, 60, 20)
    assert job.spec.output.uri == str(tmp_path / "lr-0.003")
    assert args.r_value == 8 and args.index_method == "IndexFlatL2" and job.spec.memory.seed == 3
    assert JOB.spec.finetuneArgs.learning_rate == 9e-4  # the user's job is not modified


def test_best_trial_is_lowest_loss_then_highest_recall_and_never_nan():
    trials = [trial(1e-4, 0.9), trial(9e-4, 0.01, 0.9), trial(3e-3, 0.01, 0.95), trial(1e-2, math.nan)]
    assert best_trial(trials).learning_rate == 3e-3


def test_best_trial_prefers_full_recall_in_fewest_steps():
    slow = trial(3e-3, 0.012, 1.0, curve=(1.0, 0.5, 0.1, 0.012))
    fast = trial(1e-2, 0.018, 1.0, curve=(1.0, 0.018))  # stopped early: every fact below stopLoss
    assert best_trial([slow, fast, trial(9e-4, 0.005, 0.9)]).learning_rate == 1e-2
    with pytest.raises(ValueError, match="every trial diverged"):
        best_trial([trial(1e-2, math.nan)])


def test_sweep_report(tmp_path):
    path = write_sweep_report([trial(1e-4, 0.9, 0.2), trial(9e-4, 0.05, 1.0)], tmp_path, "facts")
    text = path.read_text()
    assert "| 0.0009 **best** | 0.05 | 100.0% |" in text and "Best learning rate: **0.0009** (every fact" in text
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [t["learning_rate"] for t in json.loads((tmp_path / "trials.json").read_text())] == [1e-4, 9e-4]
