"""The engine at scale (issue 14): CounterFact edits in one job, what each fact costs, and how that grows.

    .venv/bin/python bench/scale_bench.py --facts 10000 --out bench/results/scale-counterfact-10k
    .venv/bin/python bench/scale_bench.py --facts 1000 --out bench/results/scale-counterfact-1k --sample 300

Reads ../shared/data/counterfact/counterfact-10k.json (not in the repository; see its SOURCE.md). The first --facts
records whose prompt is new become `{"input": prompt, "output": target_new}` and are tuned in one job with
RECIPE (the README's recipe for thousands of facts). Then greedy generation on a seeded sample of --sample records:
exact match on the edited prompt (Reliability), on `rephrase_prompt` (Generalization) and whether the answer to
`locality_prompt` (same relation, another subject: the near kind of locality) is identical to the base model's.
A locality prompt whose subject is itself edited in the job is left out of Locality and counted apart. Training's
own recall (every answer token the argmax, on all facts) is reported too. Every number comes from this run; the
machine's load average is recorded at start and end. Each size runs in its own process: peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memtune.spec import parse_job
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.job import run_job

COUNTERFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-10k.json"
RECIPE = {
    "finetuneArgs": {
        "max_steps": 20000,  # a ceiling: training stops once every fact is learned
        "learning_rate": 5.6e-5,  # on Lamini's scale (schedule.py): the rank-4 experts step at 1e-2
        "r_value": 4,
        "index_method": "IndexIVFFlat",
        "index_k": 2,
        "max_length": 256,
    },
    "memory": {"numExpertLayers": 4, "expertDtype": "bfloat16", "batchSize": 32},
}


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def load_records(count: int) -> list[dict]:
    rows, seen = [], set()
    for row in json.loads(COUNTERFACT.read_text(encoding="utf-8")):
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
        if len(rows) == count:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=10000)
    parser.add_argument("--sample", type=int, default=500, help="records whose prompts are generated (each kind)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "memtune-scale-bench")
    options = parser.parse_args()
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(options.facts)
    nlist = max(2, round(4 * len(records) ** 0.5))
    recipe = json.loads(json.dumps(RECIPE))
    recipe["finetuneArgs"] |= {"index_ivf_nlist": nlist, "index_ivf_nprobe": min(48, nlist)}
    data = options.work / f"counterfact-{len(records)}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(
        "".join(json.dumps({"input": r["prompt"], "output": r["target_new"]}) + "\n" for r in records),
        encoding="utf-8",
    )
    job = parse_job(
        {
            "metadata": {"name": "scale"},
            "spec": {"dataset": {"uri": str(data)}, **recipe, "output": {"uri": str(options.work / out.name)}},
        }
    )
    load_start, date = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M")
    commit = _commit()  # at the start: the code this run ran
    summary = run_job(job, use_cached_model=False, show_progress=True)
    print(flush=True)

    sample = random.Random(0).sample(records, min(options.sample, len(records)))
    edited = {r["subject"] for r in records}
    near = [r for r in sample if r["locality_prompt"] and not any(s in r["locality_prompt"] for s in edited)]
    excluded = len(sample) - len(near)
    started = time.perf_counter()
    with MemoryModel.load(summary.run_dir) as tuned:
        rel = tuned.generate([r["prompt"] for r in sample], max_new_tokens=16)
        gen = tuned.generate([r["rephrase_prompt"] for r in sample], max_new_tokens=16)
        loc = tuned.generate([r["locality_prompt"] for r in near], max_new_tokens=16)
    with MemoryModel.load(job.spec.baseModel) as base:
        loc_base = base.generate([r["locality_prompt"] for r in near], max_new_tokens=16)
    eval_seconds = time.perf_counter() - started
    targets = [r["target_new"].strip() for r in sample]
    result = {
        "facts": len(records),
        "recipe": recipe,
        "tuning_seconds": round(summary.seconds, 1),
        "seconds_per_fact": round(summary.seconds / len(records), 4),
        "steps": summary.steps,
        "training_recall": summary.recall,
        "footprint": summary.footprint,
        "sample": len(sample),
        "reliability": sum(a.output == t for a, t in zip(rel, targets, strict=True)) / len(sample),
        "generalization": sum(a.output == t for a, t in zip(gen, targets, strict=True)) / len(sample),
        "locality": sum(a.output == b.output for a, b in zip(loc, loc_base, strict=True)) / max(len(near), 1),
        "locality_prompts": len(near),
        "locality_excluded_edited_subject": excluded,
        "eval_seconds": round(eval_seconds, 1),
        "commit": commit,
        "date": date,
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
    }
    misses = [
        {"prompt": r["prompt"], "expected": t, "got": a.output}
        for r, a, t in zip(sample, rel, targets, strict=True)
        if a.output != t
    ]
    (out / "summary.json").write_text(json.dumps({**result, "reliability_misses": misses}, indent=2), "utf-8")
    (out / "report.md").write_text(report(result, misses), encoding="utf-8")
    print(json.dumps(result, indent=2))


def report(result: dict, misses: list[dict]) -> str:
    footprint, load = result["footprint"] or {}, result["load_average"]
    gib = 1024**3
    rows = [
        ("Reliability: edited prompt, greedy exact match", f"{result['reliability']:.1%}", ">= 99%"),
        ("Generalization: rephrase_prompt, greedy exact match", f"{result['generalization']:.1%}", ">= 80%"),
        (
            f"Locality: locality_prompt identical to the base model ({result['locality_prompts']}; "
            f"{result['locality_excluded_edited_subject']} left out: their subject is edited too)",
            f"{result['locality']:.1%}",
            ">= 95%",
        ),
        ("training recall, all facts (every answer token the argmax)", f"{result['training_recall']:.2%}", "-"),
        ("tuning, end to end", f"{result['tuning_seconds'] / 60:.1f} min ({result['steps']} steps)", "<= 60 min"),
        (
            "peak RSS",
            f"{footprint.get('peak_rss_bytes', 0) / gib:.2f} GiB "
            f"({footprint.get('peak_rss_bytes_per_fact', 0) / 1024:.1f} KiB per fact)",
            "<= 8 GiB",
        ),
        (
            "bytes per fact on disk (experts, keys, index, anchors)",
            f"{footprint.get('disk_bytes_per_fact', 0) / 1024:.1f} KiB",
            "<= 64 KiB",
        ),
        ("seconds per fact (tuning)", f"{result['seconds_per_fact']:.3f} s", "flat in N"),
    ]
    lines = [
        f"# CounterFact, {result['facts']} edits in one job",
        "",
        f"Commit {result['commit']}, {result['date']}; {load['cores']} CPU cores, no GPU; 1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end (above the core count: other work shared "
        "the machine, times are upper bounds). Generation measured on a seeded sample of "
        f"{result['sample']} records. Recipe: `{json.dumps(result['recipe'])}`.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *(f"| {name} | {value} | {target} |" for name, value, target in rows),
        "",
        f"Disk bytes of the memory by part: `{json.dumps(footprint.get('disk_bytes'))}`; the frozen pass's scratch "
        f"file took {footprint.get('scratch_bytes_per_fact', 0) / 1024:.0f} KiB per fact while training "
        "(deleted after).",
        "",
        f"Reliability misses ({len(misses)}, first 20):",
        *(f"- {m['prompt']!r}: expected {m['expected']!r}, got {m['got']!r}" for m in misses[:20]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
