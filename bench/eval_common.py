"""Shared steps of the evaluation benchmarks (bench/eval_*.py): train the MoME job, run the ladder, write the report.

Each benchmark is `python bench/eval_<name>.py [--baselines ...] [--lora-steps N]`; results land in
`bench/results/eval-<name>/` (report.md, accuracy-*.png, loss.png, results.json). Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from memtune.data import Example
from memtune.evaluation.ladder import METHODS, Ladder, run_ladder
from memtune.evaluation.lora import DEFAULT_LORA_LR, LoraSettings
from memtune.evaluation.report import markdown_table, write_report
from memtune.evaluation.scoring import MethodScore
from memtune.spec import MemoryTuningJob

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"


def arguments(description: str, max_new_tokens: int = 64) -> argparse.Namespace:
    """Common options; `max_new_tokens` must cover the longest expected answer (then end-of-turn)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--baselines", default=",".join(METHODS), help="comma-separated rungs (default: all)")
    parser.add_argument(
        "--lora-steps",
        type=int,
        default=None,
        help="LoRA steps (default: the MoME job's max_steps, i.e. equal steps)",
    )
    parser.add_argument(
        "--lora-lr",
        type=float,
        default=DEFAULT_LORA_LR,
        help="LoRA's learning rate (its usual one; the experts' 1e-2 makes a full-model LoRA diverge)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--fresh", action="store_true", help="retrain the MoME job even if a cached run matches")
    parser.add_argument(
        "--keep", action="store_true", help="keep the rows of methods not run now from the previous results.json"
    )
    args = parser.parse_args()
    args.methods = [m.strip() for m in args.baselines.split(",") if m.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return args


def train_mome(job: MemoryTuningJob, fresh: bool) -> dict[str, object]:
    """Run (or reuse) the MoME job; returns its summary."""
    from memtune.trainer.tuning.job import run_job

    return run_job(job, use_cached_model=not fresh, show_progress=True).to_dict()


def lora_settings(job: MemoryTuningJob, args: argparse.Namespace) -> LoraSettings:
    """The job's footing (steps, examples per step, seed) at LoRA's own learning rate."""
    matching = LoraSettings.matching(job.spec, args.lora_lr)
    return matching if args.lora_steps is None else replace(matching, steps=args.lora_steps)


def job_ladder(job: MemoryTuningJob, args: argparse.Namespace, train: Sequence[Example], **options: Any) -> Ladder:
    """The ladder on one job's footing: its base model, training pairs and output; `options` are Ladder fields."""
    return Ladder(
        methods=args.methods,
        base_model=job.spec.baseModel,
        train=list(train),
        mome_model=job.spec.output.uri,
        lora=lora_settings(job, args),
        max_new_tokens=args.max_new_tokens,
        **options,
    )


def mome_note(summary: Mapping[str, object]) -> str:
    """The report note on the MoME job of this invocation."""
    if summary:
        return f"MoME job summary: {dict(summary)}"
    return "MoME not run in this invocation (with --keep its rows come from the earlier run)."


def _previous_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"sets": {}, "settings": {}}


def _kept_rows(previous: dict[str, Any], rerun: Sequence[str]) -> dict[str, list[MethodScore]]:
    """Rows of an earlier results.json for the methods not being re-run now (slow machines: one rung at a time)."""
    return {
        name: [MethodScore.from_dict(r) for r in records if r["method"] not in rerun]
        for name, records in previous["sets"].items()
    }


def ladder_report(
    name: str,
    title: str,
    ladder: Ladder,
    sets: Mapping[str, Sequence[Example]],
    locality: Sequence[str],
    settings: dict[str, object],
    notes: Sequence[str],
    keep: bool = False,
    locality_answers: Sequence[str] = (),
) -> dict[str, list[MethodScore]]:
    """Run the ladder, print the tables, write bench/results/eval-<name>/ (with `keep`: merged with earlier rows)."""
    started = time.monotonic()
    settings = {
        **settings,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU only, shared with other jobs",
        "decoding": f"greedy, at most {ladder.max_new_tokens} new tokens, stop at end-of-turn",
        "prompt rung": f"first {ladder.few_shot} training pairs after the system text",
        "rag rung": f"top {ladder.rag_k} training pairs by cosine similarity (all-MiniLM-L6-v2 if installed)",
        "lora rung": ladder.lora if "lora" in ladder.methods else "not run",
    }

    folder = RESULTS / f"eval-{name}"
    previous = _previous_results(folder) if keep else {"sets": {}, "settings": {}}
    kept = _kept_rows(previous, ladder.methods)
    if keep and "lora" not in ladder.methods:  # the kept LoRA rows were trained with the earlier settings
        settings["lora rung"] = previous["settings"].get("lora rung", "not run")

    def report(sections: dict[str, list[MethodScore]]) -> Path:
        timed = {**settings, "ladder wall time (this invocation)": f"{time.monotonic() - started:.0f} s"}
        merged = {
            set_name: sorted(kept.get(set_name, []) + scores, key=lambda s: METHODS.index(s.method))
            for set_name, scores in sections.items()
        }
        return write_report(folder, title, merged, timed, notes)

    # `report` writes a partial report after each rung
    sections = run_ladder(ladder, sets, locality, on_method=report, locality_answers=locality_answers)
    path = report(sections)
    for set_name, scores in sections.items():
        print(f"\n## {set_name}\n\n{markdown_table(scores)}")
    print(f"\nreport: {path}")
    return sections
