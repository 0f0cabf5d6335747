"""The gate at 10,000 facts: does it still open for rewordings and stay shut for near neighbours as a memory grows?

    .venv/bin/python bench/gate_scale.py --facts 1000 3000 10000 --sample 1000 --out bench/results/gate-scale

Reads ../shared/data/counterfact/counterfact-10k.json (not in the repository; see its SOURCE.md). For each size, the
first --facts records with a new prompt are the trained questions: their evidence (units, anchors from one base-model
pass) and routing keys are computed as a job computes them (default layout of the default model), and indexed
exactly (IndexFlatL2). Then, on a seeded sample of --sample records, the gate decides over the index's 8 nearest
candidates, as the router does:
- trained: the edited prompt itself must open on its own question;
- generalization: `rephrase_prompt` opens on its own question (CounterFact's rephrases prepend an unrelated sentence
  and reword the relation, so this is a hard set);
- near locality: `locality_prompt` (same relation, another subject) must stay shut (any open counts, and which
  trained question it opened is reported); prompts whose subject is itself trained are counted apart.
Only the gate's evidence checks decide (distances are reported, not thresholded: calibration needs a tuned run), so
this measures the entity and relation checks at each size. No tuning: seconds per size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import faiss

sys.path.insert(0, str(Path(__file__).parent))

from scale_bench import load_records

from memtune.spec import parse_job
from memtune.trainer.mome.anchors import Anchors, evidence, text_evidence
from memtune.trainer.mome.architecture import architecture
from memtune.trainer.mome.base import load_base_model
from memtune.trainer.mome.gate import Gate
from memtune.trainer.mome.keys import question_keys
from memtune.trainer.mome.router import CANDIDATES
from memtune.trainer.tuning.job import plan_layout


def measure(base, records: list[dict], sample: list[dict], key_layer: int, share: float, seen: list, keys) -> dict:
    """The gate over the first len(records) trained questions; `seen` / `keys`: their evidence and keys (N, d)."""
    questions = [r["prompt"] for r in records]
    gate = Gate(Anchors(seen[: len(records)], share), float("inf"), None)  # idf over this memory's questions
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys[: len(records)])
    own = {q: i for i, q in enumerate(questions)}
    trained_subjects = {r["subject"] for r in records}

    def decide(texts: list[str]) -> list[int]:
        _, slots = index.search(question_keys(base, texts, key_layer).numpy(), CANDIDATES)
        return [
            gate.decide(row.tolist(), [0.0] * len(row), evidence(t)).slot for t, row in zip(texts, slots, strict=True)
        ]

    started = time.perf_counter()
    trained = decide([r["prompt"] for r in sample])
    reworded = decide([r["rephrase_prompt"] for r in sample])
    near = [r for r in sample if r["locality_prompt"] not in own]
    local = decide([r["locality_prompt"] for r in near])
    decide_seconds = time.perf_counter() - started
    apart = [
        slot >= 0 for r, slot in zip(near, local, strict=True) if _names_trained(r["locality_prompt"], trained_subjects)
    ]
    clean = [
        (r, slot)
        for r, slot in zip(near, local, strict=True)
        if not _names_trained(r["locality_prompt"], trained_subjects)
    ]
    opened = [(r["locality_prompt"], questions[slot]) for r, slot in clean if slot >= 0]
    return {
        "facts": len(records),
        "sample": len(sample),
        "trained_open_own": sum(s == own[r["prompt"]] for r, s in zip(sample, trained, strict=True)) / len(sample),
        "rephrase_open_own": sum(s == own[r["prompt"]] for r, s in zip(sample, reworded, strict=True)) / len(sample),
        "locality_prompts": len(clean),
        "locality_opened": len(opened) / max(1, len(clean)),
        "locality_subject_trained": len(apart),
        "locality_subject_trained_opened": sum(apart),
        "ms_per_decision": round(1000 * decide_seconds / (2 * len(sample) + len(near)), 2),
        "opened_examples": opened[:10],
    }


def _names_trained(text: str, subjects: set[str]) -> bool:
    return any(subject in text for subject in subjects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = load_base_model("smollm2-135m-instruct")
    job = parse_job(
        {"metadata": {"name": "gate-scale"}, "spec": {"dataset": {"uri": "unused.jsonl"}, "output": {"uri": "unused"}}}
    )
    key_layer = plan_layout(job, len(architecture(base.model).layers)).key_layer
    load_start, date = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M")
    # read at the start: the code this run ran
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    # Evidence and keys depend on each question alone: computed once for the largest memory, sliced for the others.
    largest = load_records(max(options.facts))
    started = time.perf_counter()
    seen = text_evidence(base, [r["prompt"] for r in largest])
    keys = question_keys(base, [r["prompt"] for r in largest], key_layer).numpy()
    print(f"evidence and keys of {len(largest)} questions: {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for count in sorted(options.facts):
        records = largest[:count]
        sample = random.Random(0).sample(records, min(options.sample, len(records)))
        rows.append(measure(base, records, sample, key_layer, job.spec.memory.anchorShare, seen, keys))
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    result = {
        "sizes": rows,
        "commit": commit,
        "date": date,
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "report.md").write_text(_report(result), encoding="utf-8")


def _report(result: dict) -> str:
    load = result["load_average"]
    lines = [
        "# The gate as the memory grows (CounterFact, no tuning)",
        "",
        f"Commit {result['commit']}, {result['date']}; default model, default layout, `anchorShare` default; "
        f"{load['cores']} CPU cores, 1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at "
        "the end. Only the entity and relation checks decide (no distance threshold).",
        "",
        "| trained facts | sample | trained prompt opens its own question | rephrase opens its own question | "
        "near locality prompts opened | locality naming a trained subject (opened) | ms per decision |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['facts']} | {r['sample']} | {r['trained_open_own']:.1%} | {r['rephrase_open_own']:.1%} | "
            f"{r['locality_opened']:.1%} of {r['locality_prompts']} | {r['locality_subject_trained']} "
            f"({r['locality_subject_trained_opened']}) | {r['ms_per_decision']} |"
            for r in result["sizes"]
        ),
        "",
        "Near locality prompts the gate opened (first 10 at the largest size):",
        *(f"- {prompt!r} -> {question!r}" for prompt, question in result["sizes"][-1]["opened_examples"]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
