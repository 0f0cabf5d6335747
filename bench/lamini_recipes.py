"""Lamini's documented Memory Tuning recipes, taken as written, on data of the size each is for (issue 12).

    .venv/bin/python bench/lamini_recipes.py --recipe small            # 15 invented facts, 50 steps, 3e-4, r 32
    .venv/bin/python bench/lamini_recipes.py --recipe small --literal  # the same with learning_rate as the step
    .venv/bin/python bench/lamini_recipes.py --recipe defaults         # 15 facts, Lamini's defaults ({})
    .venv/bin/python bench/lamini_recipes.py --recipe pdf-800          # 800 synthetic facts, 500 steps, 9e-5
    .venv/bin/python bench/lamini_recipes.py --recipe text2sql         # examples/nba-sql-job.yaml, 500 steps, 1e-5
    .venv/bin/python bench/lamini_recipes.py --recipe facts-10k --count 1000   # the 10k recipe on 1,000 facts

The recipes are Lamini's ("Memory Tuning" docs page, example settings): every finetune arg of the recipe and
nothing else, so the rest are Lamini's defaults (memtune's are the same). Facts come from bench/facts.py (fixed
seed); text-to-SQL uses the notebook data shipped in examples/. Recall is the run's own: the share of questions
whose greedy answer is exactly the trained one. `--literal` is the baseline: the reading before training
revision 6, where `learning_rate` was the experts' step and the working set never grew. Each run appends one row
(commit, date, load) to bench/results/lamini-recipes/summary.json and rewrites report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from facts import make_facts

from memtune.spec import load_job_file, parse_job, resolve_local_paths
from memtune.trainer.tuning import schedule
from memtune.trainer.tuning.job import run_job

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "lamini-recipes"
RECIPES: dict[str, tuple[str, int, dict]] = {
    "small": ("15 invented facts", 15, {"max_steps": 50, "r_value": 32, "learning_rate": 0.0003}),
    "defaults": ("15 invented facts, Lamini's defaults", 15, {}),
    "pdf-800": ("800 synthetic facts (the 800+ facts recipe)", 800, {"max_steps": 500, "learning_rate": 0.00009}),
    "text2sql": ("text-to-SQL notebook, 122 questions", 0, {"max_steps": 500, "learning_rate": 0.00001}),
    "facts-10k": (
        "synthetic facts (the 10,000-facts recipe)",
        10_000,
        {
            "gradient_accumulation_steps": 4,
            "index_k": 2,
            "index_max_size": 65536,
            "index_method": "IndexFlatL2",
            "learning_rate": 0.0003,
            "max_length": 512,
            "max_steps": 10000,
            "index_ivf_nlist": 2048,
            "max_finetuning_examples": 10000,
            "r_value": 64,
        },
    ),
}


def _literal() -> None:
    """Before training revision 6: the experts step at `learning_rate` itself, in working sets of the configured
    size."""

    def literal_plan(args, batch_size, questions):
        return schedule.Schedule(args.learning_rate, 0, batch_size * args.gradient_accumulation_steps,
                                 args.gradient_accumulation_steps)  # fmt: skip

    schedule.plan_schedule = literal_plan
    import memtune.trainer.tuning.job as job_module

    job_module.plan_schedule = literal_plan


def _job(recipe: str, count: int, folder: Path):
    _, default_count, args = RECIPES[recipe]
    if recipe == "text2sql":
        job = resolve_local_paths(load_job_file(ROOT / "examples" / "nba-sql-job.yaml"), ROOT / "examples")
        document = job.model_dump(mode="json", exclude_none=True)
        document["spec"]["finetuneArgs"] = {**document["spec"]["finetuneArgs"], **args}
        document["spec"]["output"] = {"uri": str(folder / "out")}
        return parse_job(document)
    facts = make_facts(count or default_count)
    data = folder / "facts.jsonl"
    data.write_text("".join(json.dumps({"input": f["input"], "output": f["output"]}) + "\n" for f in facts))
    document = {
        "metadata": {"name": recipe},
        "spec": {"dataset": {"uri": str(data)}, "finetuneArgs": args, "output": {"uri": str(folder / "out")}},
    }
    return parse_job(document)


def _report(rows: list[dict]) -> str:
    lines = [
        "# Lamini's recipes as written (issue 12)",
        "",
        "Written by `bench/lamini_recipes.py`; each row is one run on this machine (2 CPU cores, shared: the load",
        "average is the machine's, other work included). Recall: share of distinct questions answered exactly.",
        "",
        "| recipe | data | finetune_args | reading | steps | facts/step | recall | unlearned | seconds | load "
        "| commit | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['data']} | `{json.dumps(r['finetune_args'])}` | {r['reading']} | {r['steps']} "
            f"| {r['facts_per_step']} | {r['recall']:.1%} | {r['unlearned_count']} | {r['seconds']:.0f} "
            f"| {r['load'][0]:.1f} → {r['load'][1]:.1f} | {r['commit']} | {r['date']} |"
        )
    lines += ["", "Commands: see the module docstring of `bench/lamini_recipes.py`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--count", type=int, default=0, help="facts to generate (default: the recipe's size)")
    parser.add_argument("--literal", action="store_true", help="baseline: learning_rate is the experts' step")
    options = parser.parse_args()
    if options.literal:
        _literal()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    with tempfile.TemporaryDirectory(prefix="lamini-recipe-") as tmp:
        job = _job(options.recipe, options.count, Path(tmp))
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        summary = run_job(job, use_cached_model=False, show_progress=False)
        seconds = time.perf_counter() - started
        meta = json.loads((Path(summary.run_dir) / "memtune.json").read_text())
    row = {
        "recipe": options.recipe,
        "data": RECIPES[options.recipe][0] + (f" ({options.count})" if options.count else ""),
        "finetune_args": RECIPES[options.recipe][2],
        "reading": "literal (before revision 6)" if options.literal else "Lamini's scale (schedule.py)",
        "steps": summary.steps,
        "facts_per_step": meta.get("schedule", {}).get("facts_per_step"),
        "schedule": meta.get("schedule"),
        "questions": meta["metrics"]["questions"],
        "recall": summary.recall,
        "unlearned_count": summary.unlearned_count,
        "unlearned": summary.unlearned[:5],
        "seconds": seconds,
        "load": [load_before, os.getloadavg()[0]],
        "commit": commit.stdout.strip() + ("+dirty" if _dirty() else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(json.dumps(row))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "summary.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append(row)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    (OUT / "report.md").write_text(_report(rows))


def _dirty() -> bool:
    status = subprocess.run(["git", "status", "--porcelain", "--", "memtune"], capture_output=True, text=True, cwd=ROOT)
    return bool(status.stdout.strip())


if __name__ == "__main__":
    main()
