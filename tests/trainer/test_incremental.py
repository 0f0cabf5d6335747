"""A memory grown from its parent (issue 15), with the real default model: the six-fact run of conftest is the parent;
the child keeps four facts, changes one answer, drops one and adds one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memtune.manifest import write_manifest
from memtune.spec import SpecError, parse_job
from tests.trainer.conftest import facts_job

pytestmark = pytest.mark.slow

NEW_FACT = {"input": "Which river flows through Tarvelka?", "output": "Ombrisel"}
UPDATED_ANSWER = "Vostrapel"


def child_job(output: Path, dataset: Path, parent: str, **memory: object):
    document = facts_job(output).model_dump(mode="json", exclude_none=True)
    document["spec"]["dataset"] = {"uri": str(dataset)}
    document["spec"]["memory"] = {"parent": parent, **memory}
    return parse_job(document)


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def grown(trained, facts, base, tmp_path_factory: pytest.TempPathFactory):
    """(parent run folder, child job, child summary): facts 0-3 unchanged, 4 updated, 5 forgotten, one added."""
    from memtune.trainer.tuning.job import run_job

    _, parent = trained
    folder = tmp_path_factory.mktemp("grown")
    records = [{"input": f["input"], "output": f["output"]} for f in facts[:4]]
    records += [{"input": facts[4]["input"], "output": UPDATED_ANSWER}, NEW_FACT]
    job = child_job(folder / "out", write_jsonl(folder / "v2.jsonl", records), parent.run_dir)
    return Path(parent.run_dir), job, run_job(job, show_progress=False, base=base)


def meta_of(run: str | Path) -> dict:
    return json.loads((Path(run) / "memtune.json").read_text())


def facts_of(run: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "facts.jsonl").read_text().splitlines()]


def test_child_records_its_parent_and_what_changed(grown) -> None:
    parent, _, summary = grown
    meta = meta_of(summary.run_dir)
    assert meta["parent"]["run_id"] == parent.name and meta["parent"]["uri"] == str(parent)
    assert meta["parent"]["cache_key"] == meta_of(parent)["cache_key"]
    assert meta["diff"] == {
        "added": 1,
        "updated": 1,
        "forgotten": 1,
        "unchanged": 4,
        "kept_by_append": 0,
        "retrained": 0,
        "forgotten_gated": 1,
    }
    assert meta["metrics"]["trained"] == 2 and meta["metrics"]["questions"] == 6 and summary.recall == 1.0
    assert meta["experts"]["count"] == 6  # one expert went with the forgotten fact, one came with the new one


def test_unchanged_experts_are_byte_identical_to_the_parents(grown, facts) -> None:
    parent, _, summary = grown

    def experts_by_question(run: Path) -> dict[str, bytes]:
        keys = load_file(run / "keys.safetensors")
        bank = load_file(next((run / "experts").iterdir()))
        rows = {}
        for slot, fact in enumerate(facts_of(run)):
            expert = int(keys["slot_expert"][slot])
            rows[fact["input"]] = b"".join(
                bank[name][expert].contiguous().view(torch.uint8).numpy().tobytes() for name in "AB"
            )
        return rows

    before, after = experts_by_question(parent), experts_by_question(Path(summary.run_dir))
    for fact in facts[:4]:
        assert after[fact["input"]] == before[fact["input"]], fact["input"]
    assert after[facts[4]["input"]] != before[facts[4]["input"]]  # the updated answer's expert was retrained
    assert facts[5]["input"] not in after


def test_unchanged_questions_answer_exactly_as_before(grown, facts) -> None:
    from memtune.trainer.mome.model import MemoryModel

    parent, _, summary = grown
    questions = [f["input"] for f in facts[:4]]
    answers = [f["output"] for f in facts[:4]]
    with MemoryModel.load(str(parent)) as old, MemoryModel.load(summary.run_dir) as new:
        before, after = old.generate(questions), new.generate(questions)
        assert [a.output for a in after] == [a.output for a in before] == answers
        # teacher-forced, bit for bit: the same expert bytes on the same route give the same logits
        assert [s.nats for s in new.score(questions, answers)] == [s.nats for s in old.score(questions, answers)]


def test_updated_and_added_questions_answer_their_new_answers(grown, facts) -> None:
    from memtune.trainer.mome.model import MemoryModel

    _, _, summary = grown
    with MemoryModel.load(summary.run_dir) as model:
        answers = model.generate([facts[4]["input"], NEW_FACT["input"]])
    assert [a.output for a in answers] == [UPDATED_ANSWER, NEW_FACT["output"]]


def test_forgotten_question_gets_the_base_models_answer_bit_for_bit(grown, facts) -> None:
    from memtune.trainer.mome.model import MemoryModel

    _, _, summary = grown
    question = facts[5]["input"]
    with MemoryModel.load(summary.run_dir) as model, MemoryModel.load("smollm2-135m-instruct") as plain:
        [answer], [reference] = model.generate([question]), plain.generate([question])
        assert answer.route is not None and answer.route["gated"]
        assert answer.output == reference.output != facts[5]["output"]
        [scored], [base_scored] = (
            model.score([question], [facts[5]["output"]]),
            plain.score([question], [facts[5]["output"]]),
        )
        assert scored.nats == base_scored.nats


def test_same_child_job_reuses_its_run(grown, base) -> None:
    from memtune.trainer.tuning.job import run_job

    _, job, summary = grown
    again = run_job(job, show_progress=False, base=base)
    assert again.reused and again.run_dir == summary.run_dir


def test_append_keeps_what_the_dataset_no_longer_holds(grown, facts, base, tmp_path: Path) -> None:
    from memtune.trainer.tuning.job import run_job

    parent, _, _ = grown
    dataset = write_jsonl(tmp_path / "one.jsonl", [{"input": facts[0]["input"], "output": facts[0]["output"]}])
    summary = run_job(child_job(tmp_path / "out", dataset, str(parent), mode="append"), show_progress=False, base=base)
    meta = meta_of(summary.run_dir)
    assert meta["diff"]["unchanged"] == 6 and meta["diff"]["kept_by_append"] == 5 and meta["diff"]["forgotten"] == 0
    assert summary.steps == 0 and meta["metrics"]["trained"] == 0
    assert [f["input"] for f in facts_of(summary.run_dir)] == [f["input"] for f in facts]
    # nothing trained: the experts file is the parent's, byte for byte
    [mine], [theirs] = (list((Path(run) / "experts").iterdir()) for run in (summary.run_dir, parent))
    assert mine.read_bytes() == theirs.read_bytes()


def test_forget_command_commits_a_run_without_the_questions(
    grown, facts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from memtune.cli import app
    from memtune.trainer.mome.model import MemoryModel

    _, job, summary = grown
    from memtune.data import memtune_home

    home = tmp_path / "home"  # where forget stores the remaining facts' dataset
    home.mkdir()
    (home / "models").symlink_to(memtune_home() / "models")  # the base model as converted for this session
    monkeypatch.setenv("MEMTUNE_HOME", str(home))
    questions = write_jsonl(tmp_path / "q.jsonl", [{"input": facts[0]["input"]}])
    result = CliRunner().invoke(app, ["forget", "--model", summary.run_dir, "--input-file", str(questions)])
    assert result.exit_code == 0, result.output
    forgotten = Path(result.stdout.strip().splitlines()[-1])
    assert forgotten.parent.parent == Path(job.spec.output.uri)  # a new committed run of the same job output
    meta = meta_of(forgotten)
    assert meta["diff"]["forgotten"] == 1 and meta["diff"]["unchanged"] == 5 and meta["metrics"]["trained"] == 0
    with MemoryModel.load(str(forgotten)) as model:
        [answer] = model.generate([facts[0]["input"]])
    assert answer.route is not None and answer.route["gated"] and answer.output != facts[0]["output"]

    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"input": "Who painted the ceiling of Vorla?"}])
    result = CliRunner().invoke(app, ["forget", "--model", str(forgotten), "--input-file", str(unknown)])
    assert result.exit_code == 1 and "line 1" in result.output and "not a question of" in result.output


def test_parent_laid_out_otherwise_is_refused_before_training(trained, base, tmp_path: Path) -> None:
    from memtune.trainer.tuning.job import run_job

    job, parent = trained
    document = child_job(tmp_path / "out", Path(job.spec.dataset.uri), parent.run_dir).model_dump(
        mode="json", exclude_none=True
    )
    document["spec"]["finetuneArgs"]["r_value"] = 16
    document["spec"]["memory"]["expertDtype"] = "float32"
    with pytest.raises(SpecError) as caught:
        run_job(parse_job(document), show_progress=False, base=base)
    assert {path for path, _ in caught.value.problems} == {"spec.finetuneArgs.r_value", "spec.memory.expertDtype"}
    assert not (tmp_path / "out").exists()


def test_parent_without_its_questions_is_refused_by_field(trained, base, tmp_path: Path) -> None:
    from memtune.trainer.tuning.job import run_job

    job, parent = trained
    old = tmp_path / "old-run"
    shutil.copytree(parent.run_dir, old)
    (old / "facts.jsonl").unlink()
    (old / "manifest.json").unlink()
    write_manifest(old, {"run_id": old.name})
    with pytest.raises(SpecError, match=r"facts\.jsonl") as caught:
        run_job(child_job(tmp_path / "out", Path(job.spec.dataset.uri), str(old)), show_progress=False, base=base)
    assert caught.value.problems[0][0] == "spec.memory.parent"
