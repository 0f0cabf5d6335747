"""Past one machine's patience: what a fact costs at 100,000 facts, and routing over 1,000,000 keys from real text.

    .venv/bin/python bench/tiny_scale.py --facts 10000 30000 100000 --route 1000000 --out bench/results/tiny-scale

A random-weight Llama (4 layers, width 64) with the default model's tokenizer and chat template, built with
`from_config` (nothing downloaded), stands in for the base model: random weights know nothing, so recall is all memory,
and each step costs little, so the number of facts can grow far past what the 135M model allows on 2 cores. Each size
is one job in its own process (peak RSS is per process) on synthetic facts (bench/facts.py); per size: seconds and
peak RSS per fact, bytes per fact on disk, training recall (every answer token the argmax, all facts). The gate is
`always` (calibration against everyday prompts means nothing on random weights).

Routing: the same model's keys (the engine's own `question_keys`) of --route synthetic questions, indexed with the
spec's IndexIVFFlat and IndexIVFPQ plans; queries are the keys of lower-cased copies of 1,000 of the questions (a
rewording that changes tokens): recall@1 (the query reaches its own question), seconds per query, build time, bytes
per key. Writes report.md, summary.json and growth.png under --out.
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

SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4}
RECIPE = {
    "max_steps": 1_000_000,
    "learning_rate": 1.4e-3,  # on Lamini's scale (schedule.py): the rank-4 experts step at 5e-2
    "r_value": 4,
    "index_method": "IndexIVFFlat",
    "max_length": 128,
}


def build_model(folder: Path) -> Path:
    """The tiny Llama, saved as safetensors with the default model's tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from memtune.trainer.mome.base import load_base_model

    if (folder / "config.json").is_file():
        return folder
    tokenizer = load_base_model("smollm2-135m-instruct").tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SIZE,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the default init: a random model's states must differ per token
        for parameter in model.parameters():
            parameter.mul_(10.0 if parameter.dim() > 1 else 1.0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def one_size(model: Path, count: int, work: Path) -> dict:
    """Tune `count` facts in this process; what it cost."""
    from memtune.spec import parse_job
    from memtune.trainer.tuning.job import run_job

    facts = make_facts(count, seed=1)
    data = work / f"facts-{count}.jsonl"
    data.write_text("".join(json.dumps({"input": f["input"], "output": f["output"]}) + "\n" for f in facts))
    nlist = max(2, round(4 * count**0.5))
    job = parse_job(
        {
            "metadata": {"name": "tiny"},
            "spec": {
                "baseModel": str(model),
                "dataset": {"uri": str(data)},
                "finetuneArgs": {**RECIPE, "index_ivf_nlist": nlist, "index_ivf_nprobe": min(48, nlist)},
                # A random model's answer tokens plateau near 0.6 nats while every one is already the argmax: a fact
                # counts as learned from 1.0 (and exact), or training would run to max_steps.
                "memory": {"gate": "always", "batchSize": 64, "expertDtype": "bfloat16", "stopLoss": 1.0},
                "output": {"uri": str(work / f"out-{count}")},
            },
        }
    )
    summary = run_job(job, use_cached_model=False, show_progress=False, device="cpu")
    footprint = summary.footprint or {}
    return {
        "facts": count,
        "seconds": round(summary.seconds, 1),
        "seconds_per_fact": summary.seconds / count,
        "steps": summary.steps,
        "recall": summary.recall,
        "peak_rss_bytes": footprint.get("peak_rss_bytes"),
        "peak_rss_bytes_per_fact": footprint.get("peak_rss_bytes_per_fact"),
        "disk_bytes_per_fact": footprint.get("disk_bytes_per_fact"),
    }


def routing(model: Path, count: int) -> list[dict]:
    """Keys of `count` questions from the tiny model; IVF indexes over them, queried with reworded questions."""
    import numpy as np

    from memtune.spec import FinetuneArgs
    from memtune.trainer.mome.base import load_base_model
    from memtune.trainer.mome.index import build_index, index_to_bytes, plan_index
    from memtune.trainer.mome.keys import question_keys

    base = load_base_model(str(model))
    questions = [f["input"] for f in make_facts(count, seed=2)]
    started = time.perf_counter()
    keys = question_keys(base, questions, key_layer=2, batch_size=256).numpy()
    encode = time.perf_counter() - started
    picked = np.random.default_rng(0).choice(count, 1000, replace=False)
    queries = question_keys(base, [questions[i].lower() for i in picked], key_layer=2).numpy()
    rows = []
    for method in ("IndexIVFFlat", "IndexIVFPQ"):
        args = FinetuneArgs(index_method=method, index_ivf_nlist=4096, index_pq_m=8)
        plan = plan_index(method, count, keys.shape[1], args)
        started = time.perf_counter()
        index = build_index(keys, plan)
        build = time.perf_counter() - started
        started = time.perf_counter()
        found = np.array([index.search(query[None], 1)[1][0, 0] for query in queries])
        per_query = (time.perf_counter() - started) / len(queries)
        rows.append(
            {
                "method": plan.effective,
                "keys": count,
                "width": int(keys.shape[1]),
                "key_seconds_per_question": encode / count,
                "build_seconds": round(build, 1),
                "ms_per_query": round(1000 * per_query, 3),
                "recall_at_1": float((found == picked).mean()),
                "index_bytes_per_key": round(len(index_to_bytes(index)) / count, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, nargs="*", default=[10000, 30000, 100000])
    parser.add_argument("--route", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "memtune-tiny-scale")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size in this process
    options = parser.parse_args()
    options.work.mkdir(parents=True, exist_ok=True)
    model = build_model(options.work / "model")
    if options.one:
        print(json.dumps(one_size(model, options.one, options.work)))
        return
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_start, date = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M")
    sizes = []
    for count in options.facts:  # a process per size: its peak RSS is its own
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(count), "--out", str(out), "--work", str(options.work)],
            capture_output=True,
            text=True,
            check=True,
        )
        sizes.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(sizes[-1]), flush=True)
    routes = routing(model, options.route) if options.route else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "model": SIZE,
        "recipe": RECIPE,
        "sizes": sizes,
        "routing": routes,
        "commit": commit,
        "date": date,
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    _plot(sizes, out / "growth.png")
    (out / "report.md").write_text(_report(result))


def _plot(sizes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    facts = [s["facts"] for s in sizes]
    left.plot(facts, [1000 * s["seconds_per_fact"] for s in sizes], marker="o")
    left.set(xscale="log", xlabel="facts", ylabel="ms per fact (tuning)")
    right.plot(facts, [s["peak_rss_bytes_per_fact"] / 1024 for s in sizes], marker="o")
    right.set(xscale="log", xlabel="facts", ylabel="peak RSS per fact (KiB)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _report(result: dict) -> str:
    load = result["load_average"]
    lines = [
        "# A tiny random-weight model through many facts",
        "",
        f"Commit {result['commit']}, {result['date']}; model `{json.dumps(result['model'])}` with SmolLM2's tokenizer; "
        f"recipe `{json.dumps(result['recipe'])}`; {load['cores']} CPU cores; 1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end.",
        "",
        "| facts | tuning | per fact | steps | training recall | peak RSS | per fact | disk per fact |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {s['facts']} | {s['seconds']:.0f} s | {1000 * s['seconds_per_fact']:.1f} ms | {s['steps']} | "
            f"{s['recall']:.2%} | {s['peak_rss_bytes'] / 1024**3:.2f} GiB | {s['peak_rss_bytes_per_fact'] / 1024:.1f} "
            f"KiB | {s['disk_bytes_per_fact'] / 1024:.1f} KiB |"
            for s in result["sizes"]
        ),
        "",
        "![growth](growth.png)",
        "",
        "| routing | keys | width | build | per query | recall@1 (lower-cased rewording) | index bytes per key |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['method']} | {r['keys']} | {r['width']} | {r['build_seconds']:.0f} s | {r['ms_per_query']:.2f} ms | "
            f"{r['recall_at_1']:.1%} | {r['index_bytes_per_key']:.0f} |"
            for r in result["routing"]
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
