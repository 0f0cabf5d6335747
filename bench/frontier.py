"""Recall against bytes per fact: expert rank x expert layers x storage dtype, on the same facts, in one run.

    .venv/bin/python bench/frontier.py --count 200 --out bench/results/frontier

Each configuration tunes the synthetic facts of bench/facts.py (the "hundreds" recipe, only the rank, the number of
expert layers and the storage dtype changed), then answers the trained questions and their paraphrases greedily.
Bytes per fact are the run's own (memtune.json footprint: experts, keys, index, anchors on disk). Writes report.md,
summary.json and frontier.png under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from facts import make_facts

from memtune.spec import parse_job
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.job import run_job

# Lamini's default learning_rate: every rank's expert output steps alike (schedule.py).
RECIPE = {"max_steps": 500, "index_method": "IndexFlatL2"}
# (rank, expert layers, storage dtype): from the old default (rank 16, 8 layers, float32) down
CONFIGS = [(16, 8, "float32"), (16, 8, "bfloat16"), (8, 4, "bfloat16"), (4, 4, "bfloat16"), (2, 4, "bfloat16"),
           (4, 2, "bfloat16"), (1, 4, "bfloat16")]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "memtune-frontier")
    options = parser.parse_args()
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    facts = make_facts(options.count)
    data = options.work / "facts.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"input": f["input"], "output": f["output"]}) + "\n" for f in facts))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    load_start, date = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M")
    for rank, layers, dtype in CONFIGS:
        job = parse_job(
            {
                "metadata": {"name": "frontier"},
                "spec": {
                    "dataset": {"uri": str(data)},
                    "finetuneArgs": {**RECIPE, "r_value": rank},
                    "memory": {"numExpertLayers": layers, "expertDtype": dtype},
                    "output": {"uri": str(options.work / f"r{rank}-l{layers}-{dtype}")},
                },
            }
        )
        summary = run_job(job, use_cached_model=False, show_progress=False)
        with MemoryModel.load(summary.run_dir) as model:
            trained = model.generate([f["input"] for f in facts], max_new_tokens=24)
            reworded = model.generate([f["paraphrase"] for f in facts], max_new_tokens=24)
        footprint = summary.footprint or {}
        rows.append(
            {
                "rank": rank,
                "layers": layers,
                "dtype": dtype,
                "steps": summary.steps,
                "seconds": round(summary.seconds, 1),
                "recall": sum(a.output == f["output"] for a, f in zip(trained, facts, strict=True)) / len(facts),
                "paraphrase": sum(a.output == f["output"] for a, f in zip(reworded, facts, strict=True)) / len(facts),
                "bytes_per_fact": footprint.get("disk_bytes_per_fact"),
                "expert_bytes_per_fact": round(footprint.get("disk_bytes", {}).get("experts", 0) / len(facts)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "facts": len(facts),
        "recipe": RECIPE,
        "rows": rows,
        "commit": commit,
        "date": date,
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    _plot(rows, out / "frontier.png")
    (out / "report.md").write_text(_report(result))


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for key, marker in (("recall", "o"), ("paraphrase", "s")):
        axis.scatter([r["bytes_per_fact"] / 1024 for r in rows], [100 * r[key] for r in rows], marker=marker, label=key)
    for r in rows:
        axis.annotate(f"r{r['rank']} L{r['layers']} {r['dtype'][:4]}", (r["bytes_per_fact"] / 1024, 100 * r["recall"]))
    axis.set(xscale="log", xlabel="bytes per fact on disk (KiB, log)", ylabel="exact match (%)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _report(result: dict) -> str:
    load = result["load_average"]
    lines = [
        f"# Recall against bytes per fact ({result['facts']} synthetic facts)",
        "",
        f"Commit {result['commit']}, {result['date']}; recipe `{json.dumps(result['recipe'])}` with the rank, expert "
        f"layers and storage dtype below; {load['cores']} CPU cores, no GPU; 1-minute load average {load['start']:.1f} "
        f"at the start, {load['end']:.1f} at the end.",
        "",
        "| rank | expert layers | stored as | exact match | paraphrases | bytes per fact (experts) | steps | seconds |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['rank']} | {r['layers']} | {r['dtype']} | {r['recall']:.1%} | {r['paraphrase']:.1%} | "
            f"{r['bytes_per_fact'] / 1024:.1f} KiB ({r['expert_bytes_per_fact'] / 1024:.1f} KiB) | {r['steps']} | "
            f"{r['seconds']:.0f} |"
            for r in result["rows"]
        ),
        "",
        "![frontier](frontier.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
