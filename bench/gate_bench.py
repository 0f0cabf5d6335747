"""The gate benchmark (issue 18): trained facts, their rewordings, and untrained neighbours, end to end.

    .venv/bin/python bench/gate_bench.py --set catalogue --out bench/results/gate-catalogue
    .venv/bin/python bench/gate_bench.py --set multilingual --out bench/results/gate-multilingual

One job tunes the set's facts (the "hundreds" recipe); then greedy answers, tuned and base, for: every trained
question (exact match), every paraphrase (exact match), every untrained neighbour (bench/gate_sets.py: an untrained
attribute of a trained entity, a namesake, another number, a sibling company; a neighbour fails when its answer
contains any trained answer, and we report how many stay identical to the base model's), and the far-unrelated
prompts of bench/facts.py (locality: identical to the base model). A neighbour counts as answered with a trained
answer when its answer differs from the base model's and holds a trained answer: the memory put it there (the base
model's own guesses, "2018" or "123456", sometimes match a short trained answer by chance). Writes report.md and
summary.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from facts import UNRELATED
from gate_sets import SETS

from memtune.spec import parse_job
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.job import run_job

# Lamini's default learning_rate at rank 16: the experts step at 1e-2 (schedule.py), the "hundreds" recipe.
RECIPE = {"max_steps": 500, "index_method": "IndexFlatL2", "r_value": 16}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _share(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def _holds_trained_answer(text: str, answers: set[str]) -> bool:
    return any(answer in text for answer in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "memtune-gate-bench")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    options = parser.parse_args()
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = SETS[options.set]()
    facts = [r for r in rows if r["kind"] == "fact"]
    neighbours = [r for r in rows if r["kind"] == "neighbour"]
    data = out / "facts.jsonl"
    data.write_text(
        "".join(json.dumps({"input": f["input"], "output": f["output"]}, ensure_ascii=False) + "\n" for f in facts),
        encoding="utf-8",
    )
    job = parse_job(
        {
            "metadata": {"name": "gate-bench"},
            "spec": {
                "dataset": {"uri": str(data)},
                "finetuneArgs": RECIPE,
                "output": {"uri": str(options.work / out.name)},
            },
        }
    )
    load_start, started = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M")
    commit = _commit()  # at the start: the code this run ran
    summary = run_job(job, use_cached_model=False, show_progress=True)
    meta = json.loads((Path(summary.run_dir) / "memtune.json").read_text(encoding="utf-8"))

    tokens = options.max_new_tokens
    prompts = {
        "trained": [f["input"] for f in facts],
        "paraphrase": [f["paraphrase"] for f in facts],
        "neighbour": [n["input"] for n in neighbours],
        "unrelated": list(UNRELATED),
    }
    with MemoryModel.load(summary.run_dir) as tuned:
        answers = {name: tuned.generate(texts, max_new_tokens=tokens) for name, texts in prompts.items()}
    with MemoryModel.load(job.spec.baseModel) as base:
        plain = {name: base.generate(prompts[name], max_new_tokens=tokens) for name in ("neighbour", "unrelated")}

    trained_answers = {f["output"] for f in facts}
    expected = [f["output"] for f in facts]
    per_family: dict[str, Counter] = defaultdict(Counter)
    leaks = []
    for row, mine, theirs in zip(neighbours, answers["neighbour"], plain["neighbour"], strict=True):
        leaked = mine.output != theirs.output and _holds_trained_answer(mine.output, trained_answers)
        family = per_family[row["family"]]
        family["count"] += 1
        family["trained_answer"] += leaked
        family["base_identical"] += mine.output == theirs.output
        family["gated"] += bool(mine.route and mine.route["gated"])
        if leaked:
            leaks.append({"prompt": row["input"], "answer": mine.output, "base": theirs.output, "route": mine.route})
    result = {
        "set": options.set,
        "facts": len(facts),
        "recipe": RECIPE,
        "steps": summary.steps,
        "tuning_seconds": round(summary.seconds, 1),
        "trained_exact": _share([a.output == e for a, e in zip(answers["trained"], expected, strict=True)]),
        "paraphrase_exact": _share([a.output == e for a, e in zip(answers["paraphrase"], expected, strict=True)]),
        "neighbours": len(neighbours),
        "neighbours_trained_answer": sum(c["trained_answer"] for c in per_family.values()) / max(1, len(neighbours)),
        "neighbours_base_identical": sum(c["base_identical"] for c in per_family.values()) / max(1, len(neighbours)),
        "unrelated_locality": _share(
            [a.output == b.output for a, b in zip(answers["unrelated"], plain["unrelated"], strict=True)]
        ),
        "per_family": {name: dict(counts) for name, counts in sorted(per_family.items())},
        "calibration": meta["gate"],
        "commit": commit,
        "date": started,
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
    }
    misses = {
        name: [
            {"prompt": f[key], "expected": f["output"], "got": a.output, "route": a.route}
            for f, a in zip(facts, answers[name], strict=True)
            if a.output != f["output"]
        ]
        for name, key in (("trained", "input"), ("paraphrase", "paraphrase"))
    }
    (out / "summary.json").write_text(
        json.dumps({**result, "misses": misses, "leaks": leaks}, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    shutil.rmtree(options.work / out.name, ignore_errors=True)
    (out / "report.md").write_text(_report(result, misses, leaks), encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _report(result: dict, misses: dict[str, list[dict]], leaks: list[dict]) -> str:
    load = result["load_average"]
    rows = [
        ("trained questions, exact match", _percent(result["trained_exact"]), ">= 99.5%"),
        ("paraphrases, exact match", _percent(result["paraphrase_exact"]), ">= 90%"),
        (
            f"untrained neighbours answered with a trained answer ({result['neighbours']})",
            _percent(result["neighbours_trained_answer"]),
            "<= 1%",
        ),
        ("untrained neighbours identical to the base model", _percent(result["neighbours_base_identical"]), "-"),
        (
            f"far-unrelated prompts identical to the base model ({len(UNRELATED)})",
            _percent(result["unrelated_locality"]),
            "100%",
        ),
        ("tuning, end to end", f"{result['tuning_seconds']:.0f} s ({result['steps']} steps)", "-"),
    ]
    family_rows = [
        f"| {name} | {c['count']} | {c.get('trained_answer', 0)} | {c.get('base_identical', 0)} | {c.get('gated', 0)} |"
        for name, c in result["per_family"].items()
    ]
    lines = [
        f"# Gate benchmark: {result['set']}, {result['facts']} facts",
        "",
        f"Commit {result['commit']}, {result['date']}; recipe `{json.dumps(result['recipe'])}`; {load['cores']} CPU "
        f"cores, no GPU; 1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at the end.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *(f"| {name} | {value} | {target} |" for name, value, target in rows),
        "",
        "| neighbour family | prompts | trained answer | base-identical | gated |",
        "|---|---|---|---|---|",
        *family_rows,
        "",
        "What the gate did at calibration (probes built from the training questions): "
        f"`{json.dumps(result['calibration'].get('probes'))}`",
        "",
        f"Neighbours answered with a trained answer ({len(leaks)}):",
        *(f"- {leak['prompt']!r}: {leak['answer']!r} (route {leak['route']})" for leak in leaks[:30]),
        "",
        f"Paraphrase misses ({len(misses['paraphrase'])}):",
        *(f"- {m['prompt']!r}: expected {m['expected']!r}, got {m['got']!r}" for m in misses["paraphrase"][:30]),
        "",
        f"Trained misses ({len(misses['trained'])}):",
        *(f"- {m['prompt']!r}: expected {m['expected']!r}, got {m['got']!r}" for m in misses["trained"][:30]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
