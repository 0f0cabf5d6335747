"""A run that ends with facts not learned says so loudly: the CLI panel, the summary and memtune.json name them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from memtune.cli import app
from memtune.spec import load_job_file
from memtune.trainer.tuning.job import run_job

from .conftest import FACTS


def test_a_short_run_names_the_facts_it_did_not_learn(make_job, tmp_path: Path) -> None:
    questions = [json.loads(line)["input"] for line in FACTS.read_text().splitlines()]
    manifest = make_job(str(tmp_path / "out"), name="short", max_steps=1)
    result = CliRunner().invoke(app, ["run", str(manifest)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "NOT LEARNED" in result.output
    assert f"{len(questions)} facts NOT learned (recall 0.0%)" in result.output
    assert questions[0] in result.output and "and 3 more" in result.output
    assert "raise max_steps (to about 2)" in result.output

    [run] = (tmp_path / "out" / "runs").iterdir()
    metrics = json.loads((run / "memtune.json").read_text())["metrics"]
    assert metrics["unlearned_count"] == len(questions) and sorted(metrics["unlearned"]) == sorted(questions)

    reused = run_job(load_job_file(manifest), show_progress=False)  # a reused run reports them too
    assert reused.reused and reused.unlearned_count == len(questions)
    assert reused.unlearned_message().startswith(f"{len(questions)} facts NOT learned")


def test_a_full_run_reports_nothing_unlearned(make_job, tmp_path: Path) -> None:
    summary = run_job(load_job_file(make_job(str(tmp_path / "out"))), show_progress=False)
    assert summary.recall == 1.0
    assert (summary.unlearned, summary.unlearned_count, summary.unlearned_message()) == ([], 0, "")


def test_compare_base_caps_the_base_column(make_job, tmp_path: Path) -> None:
    manifest = make_job(str(tmp_path / "out"), name="compare", max_steps=1)
    result = CliRunner().invoke(app, ["run", str(manifest), "--compare-base"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    assert "base answer (first 24 tokens)" in result.output
    assert "…" in result.output  # the random tiny model rambles: its answers are cut, visibly
