"""The MoME benchmark (issue 3): recall, paraphrase recall, locality, tuning time and latency against the base model.

    .venv/bin/python bench/mome_bench.py --data synthetic --count 200 --out bench/results/synthetic-200
    .venv/bin/python bench/mome_bench.py --data zsre --count 200 --out bench/results/zsre-200
    .venv/bin/python bench/mome_bench.py --data text2sql --out bench/results/text2sql
    .venv/bin/python bench/mome_bench.py --count 200 --index-max-size 50 --out bench/results/synthetic-200-shared

Everything is measured in one process on this machine, base model and tuned model back to back. Writes
`report.md` and `summary.json` (plus the run's own loss_curve.png) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from facts import UNRELATED, make_facts

from memtune.data import Example, deduplicate
from memtune.spec import parse_job
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.job import run_job

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# The recipe for hundreds of facts: Lamini's default learning_rate (the experts step at 1e-2 at rank 16).
RECIPE = {"max_steps": 500, "index_method": "IndexFlatL2", "r_value": 16}


@dataclass
class BenchSet:
    facts: list[dict[str, str]]
    """{"input", "output", "paraphrase"?}"""
    unrelated: list[str]


def load_set(name: str, count: int) -> BenchSet:
    if name == "synthetic":
        return BenchSet(make_facts(count), UNRELATED)
    if name == "zsre":
        rows = [json.loads(line) for line in (SHARED / "zsre" / "dev.jsonl").read_text().splitlines()][:count]
        facts = [{"input": r["input"], "output": r["output"], "paraphrase": r["rephrase"]} for r in rows]
        return BenchSet(facts, [r["loc"] for r in rows[:40]] + UNRELATED)
    if name == "text2sql":
        path = Path(__file__).resolve().parents[1] / "examples" / "nba-sql" / "data" / "generated_queries_v2.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()][:count]
        return BenchSet([{"input": r["question"], "output": r["sql"]} for r in rows], UNRELATED)
    raise SystemExit(f"unknown data set {name!r}")


def answer_all(model: MemoryModel, prompts: list[str], max_new_tokens: int) -> list[str]:
    return [a.output for a in model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=8)]


def latency(
    tuned: MemoryModel, base: MemoryModel, prompts: list[str], tokens: int, rounds: int = 3
) -> dict[str, float]:
    """Median seconds per request, one prompt at a time (what a user waits for), every request generating exactly
    `tokens` tokens so both models do the same work; base and MoME alternate so machine noise hits both alike."""
    seconds: dict[str, list[float]] = {"base": [], "mome": []}
    for _ in range(rounds):
        for prompt in prompts:
            for name, model in (("base", base), ("mome", tuned)):
                started = time.perf_counter()
                model.generate([prompt], max_new_tokens=tokens, min_new_tokens=tokens, batch_size=1)
                seconds[name].append(time.perf_counter() - started)
    result = {f"{name}_ms_per_request": 1000 * statistics.median(values) for name, values in seconds.items()}
    result |= {f"{name}_ms_per_token": result[f"{name}_ms_per_request"] / tokens for name in seconds}
    ratio = result["mome_ms_per_request"] / result["base_ms_per_request"]
    return {**result, "tokens": tokens, "requests": len(prompts) * rounds, "ratio": ratio}


def share(hits: list[bool]) -> float | None:
    """The share of hits; None (JSON null) for an empty list."""
    return sum(hits) / len(hits) if hits else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "zsre", "text2sql"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--index-max-size", type=int, default=None, help="cap the experts below the facts: what sharing costs"
    )
    parser.add_argument("--latency-prompts", type=int, default=16, help="trained questions timed one at a time")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "memtune-bench",
        help="job output (large, not a result)",
    )
    options = parser.parse_args()
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bench = load_set(options.data, options.count)
    recipe = RECIPE if options.index_max_size is None else {**RECIPE, "index_max_size": options.index_max_size}
    # A memory holds one answer per question, the last line's (as run_job does): text-to-SQL's 226 lines ask 122.
    unique = deduplicate([Example(f["input"], f["output"], line) for line, f in enumerate(bench.facts)]).examples
    bench.facts = [bench.facts[example.line] for example in unique]
    data = out / "facts.jsonl"
    data.write_text("".join(json.dumps({"input": f["input"], "output": f["output"]}) + "\n" for f in bench.facts))
    job = parse_job(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "dataset": {"uri": str(data)},
                "finetuneArgs": recipe,
                "output": {"uri": str(options.work / out.name)},
            },
        }
    )
    load_before, started_at = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = run_job(job, use_cached_model=False, show_progress=True)
    print(summary)

    tuned = MemoryModel.load(summary.run_dir)
    base = MemoryModel(tuned.base)  # the same weights without memory
    questions = [f["input"] for f in bench.facts]
    answers = [f["output"].strip() for f in bench.facts]  # generation strips its answers (6 ZsRE targets lead with " ")
    paraphrased = [f for f in bench.facts if f.get("paraphrase")]
    longest = max(options.max_new_tokens, *(len(tuned.base.tokenizer(a)["input_ids"]) + 2 for a in answers))
    tuned.close()  # hooks off while the base model runs
    base_q = answer_all(base, questions, longest)
    base_u = answer_all(base, bench.unrelated, options.max_new_tokens)
    tuned = MemoryModel.load(summary.run_dir)
    tuned_q = answer_all(tuned, questions, longest)
    tuned_p = answer_all(tuned, [f["paraphrase"] for f in paraphrased], longest)
    tuned_u = answer_all(tuned, bench.unrelated, options.max_new_tokens)
    # a separate copy of the base weights: no expert hooks attached at all
    assert tuned.run is not None  # loaded from a run folder
    plain = MemoryModel.load(tuned.run.base_model, tuned.device, tuned.dtype)
    speed = latency(tuned, plain, questions[: options.latency_prompts], 32)

    result = {
        "data": options.data,
        "facts": len(bench.facts),
        "recipe": recipe,
        "tuning_seconds": summary.seconds,
        "steps": summary.steps,
        "final_loss": summary.final_loss,
        "exact_match": share([a == b for a, b in zip(tuned_q, answers, strict=True)]),
        "base_exact_match": share([a == b for a, b in zip(base_q, answers, strict=True)]),
        "paraphrase_match": share(
            [a == f["output"].strip() for a, f in zip(tuned_p, paraphrased, strict=True)] if paraphrased else []
        ),
        "locality": share([a == b for a, b in zip(tuned_u, base_u, strict=True)]),
        "unrelated_prompts": len(bench.unrelated),
        "latency": speed,
        "load_average": {"start": load_before, "end": os.getloadavg()[0], "cores": os.cpu_count()},
        "commit": commit or "unknown",  # read when the run started: the code it ran
        "date": started_at,
        "run_dir": summary.run_dir,
    }
    misses = [
        {"prompt": q, "expected": a, "got": t} for q, a, t in zip(questions, answers, tuned_q, strict=True) if a != t
    ]
    changed = [
        {"prompt": q, "base": b, "mome": t} for q, b, t in zip(bench.unrelated, base_u, tuned_u, strict=True) if b != t
    ]
    paraphrase_misses = [
        {"prompt": f["paraphrase"], "expected": f["output"].strip(), "got": t}
        for f, t in zip(paraphrased, tuned_p, strict=True)
        if t != f["output"].strip()
    ]
    (out / "summary.json").write_text(
        json.dumps({**result, "misses": misses, "paraphrase_misses": paraphrase_misses, "changed": changed}, indent=2)
    )
    shutil.copy(Path(summary.run_dir) / "loss_curve.png", out / "loss_curve.png")
    (out / "report.md").write_text(report(result, misses, paraphrase_misses, changed), encoding="utf-8")
    print(json.dumps(result, indent=2))


def _percent_or_none(value: float | None, why: str) -> str:
    return f"- ({why})" if value is None else f"{value:.1%}"


def _load_note(load: dict) -> str:
    if max(load["start"], load["end"]) > load["cores"]:
        return "above the core count: other work shared the machine, so times are upper bounds"
    return "within the core count: this benchmark had the machine to itself"


def report(result: dict, misses: list[dict], paraphrase_misses: list[dict], changed: list[dict]) -> str:
    """Numbers against the issue's targets, then every miss (up to 20) so a reader can judge them."""
    speed, load = result["latency"], result["load_average"]
    rows = [
        ("exact match, trained questions", f"{result['exact_match']:.1%}", ">= 99.5%"),
        (
            "exact match, paraphrases",
            _percent_or_none(result["paraphrase_match"], "no paraphrases in this data"),
            ">= 90%",
        ),
        (f"locality ({result['unrelated_prompts']} unrelated prompts)", f"{result['locality']:.1%}", ">= 98%"),
        ("tuning wall time (end to end)", f"{result['tuning_seconds']:.0f} s ({result['steps']} steps)", "<= 300 s"),
        (
            f"latency per request ({speed['tokens']} tokens, one prompt at a time, median of {speed['requests']}), "
            "MoME / base",
            f"{speed['mome_ms_per_request']:.0f} / {speed['base_ms_per_request']:.0f} ms = {speed['ratio']:.2f}x "
            f"({speed['mome_ms_per_token']:.1f} / {speed['base_ms_per_token']:.1f} ms per token)",
            "<= 1.2x",
        ),
        ("base model exact match (same questions)", f"{result['base_exact_match']:.1%}", "-"),
    ]
    lines = [
        f"# MoME benchmark: {result['data']}, {result['facts']} facts",
        "",
        f"Commit {result['commit']}, {result['date']}. Recipe: `{json.dumps(result['recipe'])}`; "
        f"{load['cores']} CPU cores, no GPU; 1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end ({_load_note(load)}). Base and MoME latency "
        "are timed alternately in the same process on separate copies of the weights.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *(f"| {name} | {value} | {target} |" for name, value, target in rows),
        "",
        "Misses (trained questions):",
        *(f"- {m['prompt']!r}: expected {m['expected']!r}, got {m['got']!r}" for m in misses[:20]),
        "",
        f"Paraphrase misses ({len(paraphrase_misses)}, first 20):",
        *(f"- {m['prompt']!r}: expected {m['expected']!r}, got {m['got']!r}" for m in paraphrase_misses[:20]),
        "",
        "Unrelated prompts whose answer changed:",
        *(f"- {c['prompt']!r}: base {c['base']!r}, MoME {c['mome']!r}" for c in changed),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
