"""Routing at scale: build key banks of 100k and 1M slots and time every index family.

    .venv/bin/python bench/routing_scale.py --sizes 100000 1000000 --out bench/results/routing-scale.md
    .venv/bin/python bench/routing_scale.py --methods IndexHNSWFlat:index_hnsw_m=48 --out ...

Keys are random unit vectors of the default model's width (576); queries are bank keys plus noise of a paraphrase's
typical distance, so recall@1 asks "does the query still reach its own slot". Index parameters are the spec's
defaults (what a user gets without tuning), planned by memtune.trainer.mome.index like a real run; a method may carry
finetune-arg overrides after a colon (comma-separated `name=value`). HNSW is also searched with a wider efSearch.
Bytes per slot count the index alone: runs also keep every key in float32 (2304 B at width 576) for exact
re-ranking of the top-k and the gate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from memtune.spec import FinetuneArgs
from memtune.trainer.mome.index import build_index, index_to_bytes, plan_index

DIM = 576
QUERIES = 200
# Lamini's default efSearch (8) loses recall on large banks; this shows what a wider search costs.
WIDE_EF_SEARCH = 128


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def parse_method(text: str) -> FinetuneArgs:
    """`IndexHNSWFlat:index_hnsw_efSearch=128,index_hnsw_m=48` -> the finetune args a user would write."""
    method, _, overrides = text.partition(":")
    pairs = [item.split("=", 1) for item in overrides.split(",") if item]
    return FinetuneArgs(index_method=method, **{name: int(value) for name, value in pairs})


def recall_and_latency(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """recall@1 and seconds per query, one prompt at a time (how generation asks)."""
    started = time.perf_counter()
    found = np.array([index.search(query[None], 1)[1][0, 0] for query in queries])
    return float((found == truth).mean()), (time.perf_counter() - started) / len(queries)


def measure(method: str, keys: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[dict[str, object]]:
    """One build; for HNSW also a wider efSearch, which needs no rebuild (a query-time knob)."""
    args = parse_method(method)
    plan = plan_index(args.index_method, len(keys), DIM, args)
    started = time.perf_counter()
    index = build_index(keys, plan)
    build = time.perf_counter() - started
    size = len(index_to_bytes(index))
    searches = [plan.params.get("hnsw_efSearch")]
    if isinstance(index, faiss.IndexHNSW) and WIDE_EF_SEARCH not in searches:
        searches.append(WIDE_EF_SEARCH)
    rows = []
    for ef_search in searches:
        params = dict(plan.params)
        if ef_search is not None:
            index.hnsw.efSearch = ef_search
            params["hnsw_efSearch"] = ef_search
        recall, latency = recall_and_latency(index, queries, truth)
        rows.append(
            {
                "method": plan.effective + (f" {params}" if params else ""),
                "slots": len(keys),
                "build_s": build,
                "query_ms": 1000 * latency,
                "bytes_per_slot": size / len(keys),
                "recall_at_1": recall,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["IndexFlatL2", "IndexIVFFlat", "IndexIVFPQ", "IndexHNSWFlat"])
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
            for row in measure(method, keys, queries, truth):
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
