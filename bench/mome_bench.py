"""The MoME benchmark (issue 3): recall, paraphrase recall, locality, tuning time and latency against the base model.

    .venv/bin/python bench/mome_bench.py --data synthetic --count 200 --out bench/results/synthetic-200
    .venv/bin/python bench/mome_bench.py --data zsre --count 200 --out bench/results/zsre-200
    .venv/bin/python bench/mome_bench.py --data text2sql --out bench/results/text2sql

Everything is measured in one process on this machine, base model and tuned model back to back. Writes
`report.md` and `summary.json` (plus the run's own loss_curve.png) under --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from facts import UNRELATED, make_facts

from memtune.spec import parse_job
from memtune.trainer.inference import Generator, load_generator
from memtune.trainer.job import run_job

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# The recipe for hundreds of facts (the seed's README recipe plus the learning rate our experts want).
RECIPE = {"max_steps": 500, "index_method": "IndexFlatL2", "learning_rate": 1.0e-2, "r_value": 16}


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
        path = SHARED / "text2sql-nba" / "training_data" / "generated_queries_v2.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()][:count]
        return BenchSet([{"input": r["question"], "output": r["sql"]} for r in rows], UNRELATED)
    raise SystemExit(f"unknown data set {name!r}")


def timed_generate(generator: Generator, prompts: list[str], max_new_tokens: int) -> tuple[list[str], float, int]:
    """Outputs, seconds and generated tokens (answer + end-of-turn)."""
    started = time.perf_counter()
    answers = generator.generate(prompts, max_new_tokens=max_new_tokens, batch_size=8)
    seconds = time.perf_counter() - started
    tokenizer = generator.base.tokenizer
    tokens = sum(len(tokenizer(a.output, add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    return [a.output for a in answers], seconds, tokens


def share(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "zsre", "text2sql"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=48)
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
    data = out / "facts.jsonl"
    data.write_text("".join(json.dumps({"input": f["input"], "output": f["output"]}) + "\n" for f in bench.facts))
    job = parse_job(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "dataset": {"uri": str(data)},
                "finetuneArgs": RECIPE,
                "output": {"uri": str(options.work / out.name)},
            },
        }
    )
    summary = run_job(job, use_cached_model=False, show_progress=True)
    print(summary)

    tuned = load_generator(summary.run_dir)
    base = Generator(tuned.base)  # the same weights without memory
    questions = [f["input"] for f in bench.facts]
    answers = [f["output"] for f in bench.facts]
    paraphrased = [f for f in bench.facts if f.get("paraphrase")]
    longest = max(options.max_new_tokens, *(len(tuned.base.tokenizer(a)["input_ids"]) + 2 for a in answers))
    tuned.close()  # hooks off while the base model runs
    base_q, base_q_s, base_q_tokens = timed_generate(base, questions, longest)
    base_u, base_u_s, _ = timed_generate(base, bench.unrelated, options.max_new_tokens)
    tuned = load_generator(summary.run_dir)
    tuned_q, tuned_q_s, tuned_q_tokens = timed_generate(tuned, questions, longest)
    tuned_p, _, _ = timed_generate(tuned, [f["paraphrase"] for f in paraphrased], longest)
    tuned_u, tuned_u_s, _ = timed_generate(tuned, bench.unrelated, options.max_new_tokens)

    result = {
        "data": options.data,
        "facts": len(bench.facts),
        "recipe": RECIPE,
        "tuning_seconds": summary.seconds,
        "steps": summary.steps,
        "final_loss": summary.final_loss,
        "exact_match": share([a == b for a, b in zip(tuned_q, answers, strict=True)]),
        "base_exact_match": share([a == b for a, b in zip(base_q, answers, strict=True)]),
        "paraphrase_match": share(
            [a == f["output"] for a, f in zip(tuned_p, paraphrased, strict=True)] if paraphrased else []
        ),
        "locality": share([a == b for a, b in zip(tuned_u, base_u, strict=True)]),
        "unrelated_prompts": len(bench.unrelated),
        "latency_per_token_ms": {
            "base": 1000 * base_q_s / base_q_tokens,
            "mome": 1000 * tuned_q_s / tuned_q_tokens,
        },
        "unrelated_seconds": {"base": base_u_s, "mome": tuned_u_s},
        "run_dir": summary.run_dir,
    }
    latency = result["latency_per_token_ms"]
    latency["ratio"] = latency["mome"] / latency["base"]
    misses = [
        {"prompt": q, "expected": a, "got": t} for q, a, t in zip(questions, answers, tuned_q, strict=True) if a != t
    ]
    changed = [
        {"prompt": q, "base": b, "mome": t} for q, b, t in zip(bench.unrelated, base_u, tuned_u, strict=True) if b != t
    ]
    (out / "summary.json").write_text(json.dumps({**result, "misses": misses[:20], "changed": changed}, indent=2))
    shutil.copy(Path(summary.run_dir) / "loss_curve.png", out / "loss_curve.png")
    (out / "report.md").write_text(report(result, misses, changed), encoding="utf-8")
    print(json.dumps(result, indent=2))


def report(result: dict, misses: list[dict], changed: list[dict]) -> str:
    """Numbers against the issue's targets, then every miss (up to 20) so a reader can judge them."""
    latency = result["latency_per_token_ms"]
    rows = [
        ("exact match, trained questions", f"{result['exact_match']:.1%}", ">= 99.5%"),
        ("exact match, paraphrases", f"{result['paraphrase_match']:.1%}", ">= 90%"),
        (f"locality ({result['unrelated_prompts']} unrelated prompts)", f"{result['locality']:.1%}", ">= 98%"),
        ("tuning wall time (end to end)", f"{result['tuning_seconds']:.0f} s ({result['steps']} steps)", "<= 300 s"),
        (
            "latency per token, MoME / base",
            f"{latency['mome']:.1f} / {latency['base']:.1f} ms = {latency['ratio']:.2f}x",
            "<= 1.2x",
        ),
        ("base model exact match (same questions)", f"{result['base_exact_match']:.1%}", "-"),
    ]
    lines = [
        f"# MoME benchmark: {result['data']}, {result['facts']} facts",
        "",
        f"Recipe: `{json.dumps(result['recipe'])}`; 2 shared CPU cores (other engineers' jobs ran concurrently, so "
        "times are noisy upper bounds).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *(f"| {name} | {value} | {target} |" for name, value, target in rows),
        "",
        "Misses (trained questions):",
        *(f"- {m['prompt']!r}: expected {m['expected']!r}, got {m['got']!r}" for m in misses[:20]),
        "",
        "Unrelated prompts whose answer changed:",
        *(f"- {c['prompt']!r}: base {c['base']!r}, MoME {c['mome']!r}" for c in changed),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
