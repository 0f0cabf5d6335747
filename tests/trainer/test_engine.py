"""Behaviour with the real default model: recall, locality, reuse, and refusal of damaged artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memtune.manifest import IntegrityError
from tests.trainer.conftest import UNRELATED

pytestmark = pytest.mark.slow


def test_training_reaches_full_recall(trained) -> None:
    _, summary = trained
    assert not summary.reused
    assert summary.recall == 1.0
    assert summary.final_loss < 0.05
    assert (Path(summary.run_dir) / "manifest.json").is_file()


def test_loaded_run_recalls_facts_and_paraphrases(trained, facts) -> None:
    from memtune.trainer.mome.model import MemoryModel

    job, _ = trained
    model = MemoryModel.load(job.spec.output.uri)  # the job output resolves to its latest committed run
    answers = model.generate([f["input"] for f in facts] + [f["paraphrase"] for f in facts], max_new_tokens=16)
    expected = [f["output"] for f in facts] * 2
    assert [a.output for a in answers] == expected
    assert all(a.route is not None and not a.route["gated"] for a in answers)
    # routing inside the (left-padded, batched) prefill finds each trained question's own key again
    assert all(a.route is not None and a.route["distance"] < 1e-4 for a in answers[: len(facts)])


def test_unrelated_prompts_keep_base_answers(trained) -> None:
    from memtune.trainer.mome.model import MemoryModel

    _, summary = trained
    tuned = MemoryModel.load(summary.run_dir).generate(UNRELATED, max_new_tokens=24)
    plain = MemoryModel.load("smollm2-135m-instruct").generate(UNRELATED, max_new_tokens=24)
    assert [a.output for a in tuned] == [a.output for a in plain]
    assert all(a.route is not None and a.route["gated"] for a in tuned)


def test_same_job_reuses_the_run(trained) -> None:
    from memtune.trainer.tuning.job import run_job

    job, summary = trained
    again = run_job(job, show_progress=False)
    assert again.reused and again.run_dir == summary.run_dir and again.recall == summary.recall


@pytest.mark.parametrize(
    "victim",
    ["index.faiss", "keys.safetensors", "anchors.json", "memtune.json", "experts/experts-00000-of-00001.safetensors"],
)
def test_corrupted_file_is_refused_by_name(trained, tmp_path: Path, victim: str) -> None:
    from memtune.trainer.mome.model import MemoryModel

    _, summary = trained
    copy = tmp_path / "run"
    shutil.copytree(summary.run_dir, copy)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=victim.split("/")[-1]):
        MemoryModel.load(str(copy))


def test_run_of_another_base_model_is_refused(trained) -> None:
    from memtune.trainer.mome.artifacts import load_memory, read_run

    _, summary = trained
    with pytest.raises(IntegrityError, match="trained on base model"):
        load_memory(read_run(summary.run_dir), "0" * 64)


def test_uncommitted_output_is_refused(tmp_path: Path) -> None:
    from memtune.trainer.mome.model import MemoryModel

    (tmp_path / "runs" / "20260101-000000-deadbeef").mkdir(parents=True)
    with pytest.raises(IntegrityError, match="no committed run"):
        MemoryModel.load(str(tmp_path))


def test_run_records_effective_index_and_gate(trained) -> None:
    _, summary = trained
    meta = json.loads((Path(summary.run_dir) / "memtune.json").read_text())
    assert meta["index"]["effective"] == "IndexFlatL2"
    assert 0 < meta["gate"]["threshold"] < meta["gate"]["far_min"]
    assert meta["gate"]["anchored_threshold"] == meta["gate"]["far_min"] == meta["layout"]["anchored_threshold"]
    assert meta["experts"]["count"] == 6
    assert meta["gate"]["questions_with_anchors"] == 6  # every fictional name is an anchor
    probes = meta["gate"]["probes"]  # what the gate did with rewordings and untrained neighbours at calibration
    assert probes["rewordings"] == 24 and probes["rewordings_admitted"] == 24
    assert probes["entity_neighbours"] > 0 and probes["relation_neighbours"] > 0
    for kind in ("number", "entity", "relation"):
        assert probes[f"{kind}_neighbours_blocked"] == probes[f"{kind}_neighbours"], kind


def test_anchors_are_the_units_the_base_model_cannot_predict(base) -> None:
    from memtune.trainer.mome.anchors import text_evidence

    names, coded, chinese = text_evidence(
        base, ["Where was Lumdor Pragridor born?", "What is stored in vault 7?", "请问维尔莫拉玻璃厂是谁创立的？"]
    )
    assert set(names.anchors) == {"lumdor", "pragridor"}
    # training takes the same surprisal from its frozen pass (the question's tokens, the answer after them)
    from memtune.trainer.mome.anchors import evidence
    from memtune.trainer.mome.keys import tokenize_prompt
    from memtune.trainer.tuning.encode import encode_examples

    question = "Where was Lumdor Pragridor born?"
    [encoded] = encode_examples(base, [(question, "Katevsha")], key_layer=12, first=22)
    from_training = evidence(question, tokenize_prompt(base.tokenizer, question), encoded.token_nats.tolist())
    assert from_training.anchors == pytest.approx(names.anchors, abs=1e-3)
    assert "7" in coded.anchors and "what" not in coded.anchors  # a number is an anchor whatever its surprisal
    assert {"维尔", "尔莫", "莫拉"} & set(chinese.anchors)  # an unspaced script's name is anchored by its bigrams


def test_sweep_runs_the_engine_once_per_rate_and_picks_the_rate_that_learns(tmp_path: Path) -> None:
    from memtune.evaluation.sweep import best_trial, run_sweep, write_sweep_report
    from tests.trainer.conftest import facts_job

    # Lamini's scale: 1e-5 steps the experts 10x slower than its default 9e-4 (schedule.py)
    trials = run_sweep(facts_job(tmp_path / "job"), [1e-5, 9e-4], steps=15, max_examples=None, out_dir=tmp_path)
    assert [t.learning_rate for t in trials] == [1e-5, 9e-4]
    assert all((Path(t.run_dir) / "manifest.json").is_file() and len(t.curve) == t.steps for t in trials)
    slow, fast = trials
    assert fast.final_loss < slow.final_loss and best_trial(trials) is fast
    report = write_sweep_report(trials, tmp_path / "report", "facts").read_text()
    assert "Best learning rate: **0.0009**" in report


def test_eval_scores_the_tuned_run_against_the_base_model_greedy_and_teacher_forced(trained, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from memtune.evaluation.cli import register_commands

    _, summary = trained
    app = typer.Typer()
    register_commands(app)
    locality = tmp_path / "unrelated.jsonl"  # NQ-style: prompts with their answers, for teacher-forced locality
    locality.write_text(
        json.dumps({"input": UNRELATED[0], "output": "Paris"})
        + "\n"
        + json.dumps({"input": UNRELATED[3], "output": "84"})
    )
    args = ["eval", "--model", summary.run_dir, "--data", str(Path(__file__).parent / "data" / "facts.jsonl")]
    args += ["--locality", str(locality), "--baselines", "base,mome", "--teacher-forced", "--max-new-tokens", "16"]
    result = CliRunner().invoke(app, [*args, "--report-dir", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["sets"]["facts.jsonl"]
    base, mome = (row["summary"] for row in rows)
    assert (base["exact_match"], mome["exact_match"], mome["token_accuracy"]) == (0.0, 1.0, 1.0)
    # gated prompts run the base model bit for bit: the same answers, and the same argmax on every forced token
    assert (mome["locality"], mome["locality_tf"], base["locality_tf"]) == (1.0, 1.0, 1.0)
    assert "Locality (TF)" in (tmp_path / "report" / "report.md").read_text()


def test_training_in_bfloat16_recalls_and_reports_what_a_fact_costs(facts, tmp_path: Path) -> None:
    """The half-precision path (what a GPU runs) on the CPU: the base model in bfloat16, float32 expert masters
    stored as bfloat16; recall is measured on the stored weights; the footprint is reported per fact."""
    from memtune.trainer.mome.model import MemoryModel
    from memtune.trainer.tuning.job import run_job
    from tests.trainer.conftest import facts_job

    summary = run_job(facts_job(tmp_path / "bf16"), show_progress=False, device="cpu", dtype="bfloat16")
    assert summary.recall == 1.0
    meta = json.loads((Path(summary.run_dir) / "memtune.json").read_text())
    assert meta["trained_on"] == {"device": "cpu", "dtype": "bfloat16"} and meta["experts"]["dtype"] == "bfloat16"
    footprint = summary.footprint
    assert footprint == meta["footprint"]
    parts = footprint["disk_bytes"]
    assert footprint["disk_bytes_per_fact"] == round(sum(parts.values()) / 6)
    # 8 expert layers of rank 8 at width 576, A and B, 2 bytes each, plus the safetensors header
    assert 8 * 8 * 576 * 2 * 2 * 6 <= parts["experts"] < 8 * 8 * 576 * 2 * 2 * 6 + 4096
    assert footprint["peak_rss_bytes"] > 0 and footprint["scratch_bytes_per_fact"] > 0
    with MemoryModel.load(summary.run_dir, dtype="bfloat16") as model:
        answers = model.generate([f["input"] for f in facts], max_new_tokens=16)
    assert [a.output for a in answers] == [f["output"] for f in facts]
