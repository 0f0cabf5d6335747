"""Sequential editing: a stream of T edits applied to a growing memory, batch after batch, each batch a child run of
the previous one (`memory.parent`, `mode: append`), against one full retrain on all T edits.

    .venv/bin/python bench/sequential_edit.py --dataset zsre --edits 50 --batch 10
    .venv/bin/python bench/sequential_edit.py --dataset counterfact --edits 1000 --batch 100 --data /work/shared/data

Data (benchmark only; nothing in tests reads it): ../shared/data/zsre/dev.jsonl (input, output, rephrase, loc) or
../shared/data/counterfact/counterfact-10k.json (prompt, target_new, rephrase_prompt, locality_prompt); --data
points elsewhere when the repository is not checked out beside `shared/`. ZsRE keeps the first record of each
subject group (eval_zsre.subject_groups: later records may give the same subject another target), CounterFact the
first record of each subject.

After the stream, on the final memory and on the full retrain:
- Reliability: the edited prompt -> the new target.   - Generalization: its rephrase -> the new target.
- Locality: the unrelated prompt answered as the base model answers it.
Each by greedy exact match (memtune.evaluation.metrics.exact_match, the "WILD" protocol), and for the grown memory
also teacher-forced: token accuracy on the target (Rel/Gen) and the share of the base answer's tokens where the
memory's argmax is the base's (Loc; ZsRE forces `loc_ans`, CounterFact the base model's own greedy answer).
Also: seconds per edit of every child run (its wall time over its batch, base model already loaded) against the full
retrain's seconds per edit, and after every batch the Reliability of the first batch's edits (forgetting along the
stream; PNG). Results: bench/results/sequential-edit/<dataset>-T<T>-B<B>/ (report.md, results.json, PNG).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from eval_zsre import subject_groups  # noqa: E402

from memtune.evaluation.metrics import exact_match, mean, token_accuracy, token_agreement  # noqa: E402
from memtune.spec import parse_job  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sequential-edit"
log = logging.getLogger("sequential_edit")


def load_edits(data: Path, dataset: str, count: int) -> list[dict[str, str]]:
    """The first `count` edits as {input, output, rephrase, loc, loc_ans?}, one per subject."""
    if dataset == "zsre":
        path = data / "zsre" / "dev.jsonl"
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        edits = [records[group[0]] for group in subject_groups(records)]
    else:
        path = data / "counterfact" / "counterfact-10k.json"
        seen: set[str] = set()
        edits = []
        for r in json.loads(path.read_text(encoding="utf-8")):
            if r["subject"] in seen:
                continue
            seen.add(r["subject"])
            edits.append(
                {
                    "input": r["prompt"],
                    "output": r["target_new"],
                    "rephrase": r["rephrase_prompt"],
                    "loc": r["locality_prompt"],
                }
            )
    unique = list({e["input"].strip(): e for e in reversed(edits)}.values())[::-1]  # first of each question
    if len(unique) < count:
        raise SystemExit(f"{path} holds {len(unique)} usable edits, fewer than --edits {count}")
    return unique[:count]


def job_for(name: str, dataset: Path, output: Path, parent: str | None, max_steps: int) -> Any:
    memory: dict[str, Any] = {"parent": parent, "mode": "append"} if parent else {}
    return parse_job(
        {
            "metadata": {"name": name},
            "spec": {
                "dataset": {"uri": str(dataset)},
                "output": {"uri": str(output)},
                "finetuneArgs": {  # bench/eval_zsre.py's recipe; training stops once every answer is learned
                    "max_steps": max_steps,
                    "learning_rate": 1.0e-2,
                    "r_value": 16,
                    "gradient_accumulation_steps": 1,
                    "max_length": 256,
                    "index_method": "IndexFlatL2",
                    "index_k": 2,
                },
                "gpuConfig": {"gpus": 0},
                "memory": memory,
            },
        }
    )


def write_jsonl(path: Path, edits: list[dict[str, str]]) -> Path:
    lines = (json.dumps({"input": e["input"], "output": e["output"]}, ensure_ascii=False) for e in edits)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def attach(base: Any, run_dir: str) -> Any:
    """A MemoryModel over the loaded base (no second copy of the weights); close() leaves the base plain."""
    from memtune.trainer.mome.artifacts import load_memory, read_run
    from memtune.trainer.mome.model import MemoryModel

    run = read_run(run_dir)
    return MemoryModel(base, load_memory(run, base.sha256, lazy=True), run)


def greedy(model: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    return [a.output.strip() for a in model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=16)]


def evaluate(model: Any, edits: list[dict[str, str]], base_loc: list[str], tokens: int, forced: bool) -> dict:
    targets = [e["output"] for e in edits]
    rel = greedy(model, [e["input"] for e in edits], tokens)
    gen = greedy(model, [e["rephrase"] for e in edits], tokens)
    loc = greedy(model, [e["loc"] for e in edits], tokens)
    scores = {
        "reliability_em": mean([exact_match(a, t) for a, t in zip(rel, targets, strict=True)]),
        "generalization_em": mean([exact_match(a, t) for a, t in zip(gen, targets, strict=True)]),
        "locality_em": mean([exact_match(a, b) for a, b in zip(loc, base_loc, strict=True)]),
    }
    if forced:
        pairs = model.predict_tokens([e["input"] for e in edits], targets)
        scores["reliability_tf"] = mean([token_accuracy(p, t) for p, t in pairs])
        pairs = model.predict_tokens([e["rephrase"] for e in edits], targets)
        scores["generalization_tf"] = mean([token_accuracy(p, t) for p, t in pairs])
    return scores


def locality_tf(model: Any, plain: Any, edits: list[dict[str, str]], base_loc: list[str]) -> float:
    """Share of forced locality-answer tokens where the memory's argmax equals the plain base model's."""
    prompts = [e["loc"] for e in edits]
    answers = [e.get("loc_ans") or b for e, b in zip(edits, base_loc, strict=True)]
    mine, theirs = model.predict_tokens(prompts, answers), plain.predict_tokens(prompts, answers)
    return mean([token_agreement(p, q) for (p, _), (q, _) in zip(mine, theirs, strict=True)])


def machine() -> dict[str, str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    import torch

    return {
        "commit": commit.stdout.strip() + (" (uncommitted changes)" if dirty else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, CPU only, "
        "shared with other jobs",
    }


def plot(path: Path, curve: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot([c["edits"] for c in curve], [c["first_batch_reliability_em"] for c in curve], marker="o")
    axes.set_xlabel("edits applied")
    axes.set_ylabel("Reliability (EM) of the first batch")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["zsre", "counterfact"], default="zsre")
    parser.add_argument("--edits", type=int, default=50, help="T, the stream's length")
    parser.add_argument("--batch", type=int, default=10, help="edits per child run (1: one edit at a time)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--skip-retrain", action="store_true", help="no full retrain baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("memtune").setLevel(logging.WARNING)

    from memtune.trainer.mome.base import load_base_model
    from memtune.trainer.mome.model import MemoryModel
    from memtune.trainer.tuning.job import run_job

    edits = load_edits(args.data, args.dataset, args.edits)
    folder = RESULTS / f"{args.dataset}-T{args.edits}-B{args.batch}"
    work = folder / "work"  # datasets and runs (ignored by git: runs/ holds weights)
    work.mkdir(parents=True, exist_ok=True)
    started_at = machine()
    base = load_base_model("smollm2-135m-instruct")
    plain = MemoryModel(base)
    base_loc = greedy(plain, [e["loc"] for e in edits], args.max_new_tokens)
    first = edits[: args.batch]

    steps: list[dict[str, Any]] = []
    curve: list[dict[str, float]] = []
    parent: str | None = None
    for number, start in enumerate(range(0, len(edits), args.batch)):
        batch = edits[start : start + args.batch]
        dataset = write_jsonl(work / f"batch-{number:04d}.jsonl", batch)
        job = job_for(f"stream-{number}", dataset, work / "runs" / f"stream-{number:04d}", parent, args.max_steps)
        began = time.perf_counter()
        summary = run_job(job, use_cached_model=False, show_progress=False, base=base)
        seconds = time.perf_counter() - began
        parent = summary.run_dir
        model = attach(base, parent)
        try:
            answers = greedy(model, [e["input"] for e in first], args.max_new_tokens)
            first_rel = mean([exact_match(a, e["output"]) for a, e in zip(answers, first, strict=True)])
        finally:
            model.close()
        steps.append(
            {"step": number, "edits": len(batch), "seconds": seconds, "steps": summary.steps, "diff": summary.diff}
        )
        curve.append({"edits": start + len(batch), "first_batch_reliability_em": first_rel})
        log.info("batch %d: %d edits in %.1f s, first batch Rel %.2f, diff %s", number, len(batch), seconds,
                 first_rel, summary.diff)  # fmt: skip

    model = attach(base, parent)
    try:
        grown = evaluate(model, edits, base_loc, args.max_new_tokens, forced=True)
        grown["locality_tf"] = locality_tf(model, plain, edits, base_loc)
    finally:
        model.close()
    child_seconds = [s["seconds"] / s["edits"] for s in steps[1:]] or [steps[0]["seconds"] / steps[0]["edits"]]
    result: dict[str, Any] = {
        "settings": {
            "dataset": args.dataset,
            "data": str(args.data),
            "edits": args.edits,
            "batch": args.batch,
            "max_steps": args.max_steps,
            **started_at,
        },
        "grown": grown,
        "stream": steps,
        "first_batch_curve": curve,
        "seconds_per_edit_grown": mean(child_seconds),
    }
    if not args.skip_retrain:
        dataset = write_jsonl(work / "all.jsonl", edits)
        job = job_for("retrain", dataset, work / "runs" / "retrain", None, args.max_steps)
        began = time.perf_counter()
        summary = run_job(job, use_cached_model=False, show_progress=False, base=base)
        retrain_seconds = time.perf_counter() - began
        model = attach(base, summary.run_dir)
        try:
            result["retrain"] = evaluate(model, edits, base_loc, args.max_new_tokens, forced=False)
        finally:
            model.close()
        result["retrain"]["seconds"] = retrain_seconds
        result["seconds_per_edit_retrain"] = retrain_seconds / len(edits)
        result["grown_edit_cost_share_of_retrain"] = mean(child_seconds) / retrain_seconds
    result["settings"]["finished"] = machine()["date"]
    result["settings"]["load_average_at_end"] = machine()["load_average"]
    (folder / "results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot(folder / "first-batch-reliability.png", curve)
    (folder / "report.md").write_text(report(result), encoding="utf-8")
    print(report(result))


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Sequential editing: {s['dataset']}, T = {s['edits']} in batches of {s['batch']} (SmolLM2-135M-Instruct)",
        "",
        f"commit {s['commit']}, started {s['date']}, finished {s['finished']}, load average {s['load_average']} "
        f"at start and {s['load_average_at_end']} at end; {s['machine']}. Data: {s['data']} (../shared, benchmark "
        "only).",
        "",
        "| Memory | Rel. EM | Gen. EM | Loc. EM | Rel. TF | Gen. TF | Loc. TF |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, scores: dict[str, float]) -> str:
        keys = ["reliability_em", "generalization_em", "locality_em", "reliability_tf", "generalization_tf"]
        cells = [f"{scores[k]:.3f}" if k in scores else "-" for k in [*keys, "locality_tf"]]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines.append(row("grown (stream of child runs)", result["grown"]))
    if "retrain" in result:
        lines.append(row("full retrain on all T", result["retrain"]))
    lines += ["", f"Seconds per edit, child runs after the first: {result['seconds_per_edit_grown']:.2f}"]
    if "retrain" in result:
        lines.append(
            f"Full retrain on all {s['edits']} edits: {result['retrain']['seconds']:.1f} s "
            f"({result['seconds_per_edit_retrain']:.2f} s per edit). One child edit costs "
            f"{100 * result['grown_edit_cost_share_of_retrain']:.1f}% of the full retrain."
        )
    lines += [
        "",
        "| Batch | Edits | Seconds | Steps | Diff | Rel. EM of the first batch after it |",
        "|---|---|---|---|---|---|",
    ]
    for step, point in zip(result["stream"], result["first_batch_curve"], strict=True):
        lines.append(
            f"| {step['step']} | {step['edits']} | {step['seconds']:.1f} | {step['steps']} | {step['diff']} | "
            f"{point['first_batch_reliability_em']:.2f} |"
        )
    lines += ["", "![first batch reliability](first-batch-reliability.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
