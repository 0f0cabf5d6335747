"""Learning-rate search: one short MoME job per rate on a subset of the data, then the curves and the best rate.

Memory Tuning practice for jobs under ~300 steps is to try a few rates first, because a short run has no time to
recover from a rate that is too low (the loss barely moves) or too high (it diverges or oscillates). Each trial is
the user's job with only `learning_rate`, `max_steps`, `max_finetuning_examples` and `output.uri` changed. A trial
that learns every fact stops early (memory.stopLoss), so the best rate is the one that learned everything in the
fewest steps; when none did, the lowest final loss (ties: the higher recall).

    memtune sweep examples/facts-job.yaml --rates 9e-5,3e-4,9e-4 --steps 60 --max-examples 50 --report-dir sweep/
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memtune.spec import MemoryTuningJob

# On Lamini's scale (schedule.py maps it): its documented recipes' rates and its default, then 3x above.
DEFAULT_RATES = "9e-5,3e-4,9e-4,3e-3"


@dataclass(frozen=True)
class Trial:
    learning_rate: float
    final_loss: float
    recall: float | None
    steps: int
    seconds: float
    curve: list[float]
    run_dir: str


def parse_rates(text: str) -> list[float]:
    """`"3e-4,9e-4"` -> [0.0003, 0.0009]; every bad item is named in one error."""
    rates, bad = [], []
    for item in (part.strip() for part in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            bad.append(f"{item!r} is not a number")
            continue
        if not 0 < value <= 1:  # also refuses nan
            bad.append(f"{item} is outside (0, 1]")
        rates.append(value)
    if bad or not rates:
        raise ValueError("--rates: " + ("; ".join(bad) if bad else "give at least one rate"))
    return sorted(set(rates))


def trial_job(
    job: MemoryTuningJob, rate: float, steps: int, max_examples: int | None, out_dir: Path
) -> MemoryTuningJob:
    """The user's job with the sweep's four changes; everything else (model, index, seed) is kept."""
    spec = job.spec
    args = spec.finetuneArgs.model_copy(
        update={
            "learning_rate": rate,
            "max_steps": steps,
            "max_finetuning_examples": max_examples or spec.finetuneArgs.max_finetuning_examples,
        }
    )
    output = spec.output.model_copy(update={"uri": str(out_dir / f"lr-{rate:g}")})
    return job.model_copy(update={"spec": spec.model_copy(update={"finetuneArgs": args, "output": output})})


def best_trial(trials: Sequence[Trial]) -> Trial:
    """Full recall in the fewest steps; else the lowest final loss, then the higher recall. NaN never wins."""
    finite = [t for t in trials if math.isfinite(t.final_loss)]
    if not finite:
        raise ValueError("every trial diverged (no finite final loss): try lower rates")

    def rank(t: Trial) -> tuple[int, float, float]:
        if t.recall == 1.0:
            return (0, t.steps, t.final_loss)
        return (1, round(t.final_loss, 6), -(t.recall or 0.0))

    return min(finite, key=rank)


def run_sweep(
    job: MemoryTuningJob,
    rates: Sequence[float],
    steps: int,
    max_examples: int | None,
    out_dir: Path,
) -> list[Trial]:
    """Run one job per rate with the engine (imported here: the sweep module itself stays light)."""
    from memtune.evaluation.mome import read_loss_curve
    from memtune.trainer.tuning.job import run_job

    trials = []
    for rate in rates:
        summary = run_job(trial_job(job, rate, steps, max_examples, out_dir), show_progress=False)
        trials.append(
            Trial(
                rate,
                summary.final_loss,
                summary.recall,
                summary.steps,
                summary.seconds,
                read_loss_curve(summary.run_dir),
                str(summary.run_dir),
            )
        )
    return trials


def write_sweep_report(trials: Sequence[Trial], report_dir: Path, job_name: str) -> Path:
    """report.md (table + best rate), loss.png (one curve per rate) and trials.json."""
    from memtune.evaluation.report import plot_losses  # matplotlib: only when a report is written

    report_dir.mkdir(parents=True, exist_ok=True)
    best = best_trial(trials)
    plot_losses(
        {f"lr {t.learning_rate:g}": t.curve for t in trials if t.curve},
        report_dir / "loss.png",
        title=f"{job_name}: loss per learning rate",
    )
    lines = [
        f"# Learning-rate sweep: {job_name}",
        "",
        "| Learning rate | Final loss | Recall | Steps | Seconds |",
        "|---|---|---|---|---|",
    ]
    for t in trials:
        recall = "–" if t.recall is None else f"{100 * t.recall:.1f}%"
        mark = " **best**" if t is best else ""
        lines.append(f"| {t.learning_rate:g}{mark} | {t.final_loss:.4g} | {recall} | {t.steps} | {t.seconds:.0f} |")
    why = "every fact learned in the fewest steps" if best.recall == 1.0 else "lowest final loss"
    lines += ["", f"Best learning rate: **{best.learning_rate:g}** ({why}).", "", "![loss](loss.png)", ""]
    (report_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    records: list[dict[str, Any]] = [t.__dict__ for t in trials]
    (report_dir / "trials.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return report_dir / "report.md"
