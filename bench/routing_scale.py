"""Routing at scale: build key banks of 100k and 1M slots and time every index family.

    .venv/bin/python bench/routing_scale.py --sizes 100000 1000000 --out bench/results/routing-scale.md

Keys are random unit vectors of the default model's width (576); queries are bank keys plus noise of a
paraphrase's typical distance, so recall@1 asks "does the query still reach its own slot". Index parameters are
the spec's defaults (what a user gets without tuning), planned by memtune.trainer.index like a real run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from memtune.spec import FinetuneArgs
from memtune.trainer.index import build_index, index_to_bytes, plan_index

DIM = 576
QUERIES = 200


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def measure(method: str, keys: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    plan = plan_index(method, len(keys), DIM, FinetuneArgs(index_method=method))
    started = time.perf_counter()
    index = build_index(keys, plan)
    build = time.perf_counter() - started
    size = len(index_to_bytes(index))
    started = time.perf_counter()
    found = np.array([index.search(query[None], 1)[1][0, 0] for query in queries])  # one prompt at a time
    latency = (time.perf_counter() - started) / len(queries)
    return {
        "method": plan.effective + (f" {plan.params}" if plan.params else ""),
        "slots": len(keys),
        "build_s": build,
        "query_ms": 1000 * latency,
        "bytes_per_slot": size / len(keys),
        "recall_at_1": float((found == truth).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["IndexFlatL2", "IndexIVFFlat", "IndexHNSWFlat"])
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    rows = []
    for size in options.sizes:
        keys = unit(rng.standard_normal((size, DIM), dtype=np.float32))
        truth = rng.choice(size, QUERIES, replace=False)
        # Noise with squared norm ~0.04: a typical paraphrase distance measured on the default model.
        queries = unit(keys[truth] + rng.standard_normal((QUERIES, DIM), dtype=np.float32) * np.sqrt(0.04 / DIM))
        for method in options.methods:
            row = measure(method, keys, queries, truth)
            print(row, flush=True)
            rows.append(row)
    lines = [
        "| index | slots | build s | query ms | bytes/slot | recall@1 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['method']} | {r['slots']:,} | {r['build_s']:.1f} | {r['query_ms']:.3f} | "
            f"{r['bytes_per_slot']:.0f} | {r['recall_at_1']:.3f} |"
            for r in rows
        ),
    ]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(["# Routing at scale", "", *lines, ""]), encoding="utf-8")


if __name__ == "__main__":
    main()
