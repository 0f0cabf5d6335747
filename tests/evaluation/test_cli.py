"""`memtune eval` and `memtune sweep` as registered commands: bad input fails once, naming every option."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from memtune.evaluation.cli import read_prompts, register_commands

app = typer.Typer()
register_commands(app)
runner = CliRunner(env={"COLUMNS": "400"})  # rich would wrap long error lines


def test_both_commands_are_registered():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "eval" in result.output and "sweep" in result.output


def test_eval_lists_every_problem_before_loading_any_model(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"input": "q", "output": "a"}) + "\n")
    result = runner.invoke(
        app,
        [
            "eval",
            "--data",
            str(gold),
            "--report-dir",
            str(tmp_path / "r"),
            "--baselines",
            "base,prompt,lora,mome,gpt",
            "--db",
            str(tmp_path / "none.db"),
        ],
    )
    assert result.exit_code == 1
    for words in (
        "unknown method 'gpt'",
        "prompt, lora need the training pairs",
        "mome needs the tuned model",
        "lora needs its step count",
        "--db: no SQLite file",
    ):
        assert words in result.output
    assert not (tmp_path / "r").exists()


def test_bad_evaluation_file_names_its_line(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"input": "q", "output": "a"}) + "\n" + json.dumps({"input": "q"}) + "\n")
    result = runner.invoke(app, ["eval", "--data", str(gold), "--report-dir", str(tmp_path), "--baselines", "base"])
    assert result.exit_code == 1
    assert "line 2: missing key 'output'" in result.output


def test_read_prompts_names_bad_lines(tmp_path):
    path = tmp_path / "loc.jsonl"
    path.write_text('{"input": "Capital of France?"}\n\n{"question": "x"}\n[1]\n')
    try:
        read_prompts(path, "input")
    except ValueError as error:
        assert "line 3: expected an object with a non-empty string 'input'" in str(error)
        assert "line 4" in str(error)
    else:
        raise AssertionError("bad lines were accepted")
    path.write_text('{"input": "Capital of France?"}\n')
    assert read_prompts(path, "input") == ["Capital of France?"]
