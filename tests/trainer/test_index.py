"""Every index_method either builds as asked or falls back as documented in memtune/trainer/mome/index.py."""

from __future__ import annotations

import numpy as np
import pytest

from memtune.spec import FinetuneArgs
from memtune.trainer.mome.index import build_index, index_from_bytes, index_to_bytes, plan_index

DIM = 64


def _keys(count: int) -> np.ndarray:
    keys = np.random.default_rng(0).standard_normal((count, DIM)).astype(np.float32)
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("method", "count", "effective"),
    [
        ("IndexFlatL2", 10, "IndexFlatL2"),
        ("IndexHNSWFlat", 10, "IndexHNSWFlat"),
        ("IndexIVFFlat", 10, "IndexFlatL2"),  # too few keys for 2 lists
        ("IndexIVFFlat", 400, "IndexIVFFlat"),  # nlist lowered to 400 // 39
        ("IndexPQ", 100, "IndexFlatL2"),  # PQ needs 39 * 2**nbits keys
        ("IndexIVFPQ", 100, "IndexIVFFlat"),
        ("IndexIVFPQ", 10, "IndexFlatL2"),
        ("IndexHNSWPQ", 100, "IndexHNSWFlat"),
        ("IndexPQ", 700, "IndexPQ"),  # nbits=4 -> 624 keys suffice
        ("IndexIVFPQ", 700, "IndexIVFPQ"),
        ("IndexHNSWPQ", 700, "IndexHNSWPQ"),
    ],
)
def test_index_builds_or_falls_back(method: str, count: int, effective: str, caplog) -> None:
    args = FinetuneArgs(index_method=method, index_pq_nbits=4, index_pq_m=8, index_ivf_nlist=64, index_ivf_nprobe=8)
    plan = plan_index(method, count, DIM, args)
    assert plan.effective == effective
    lowered = plan.params.get("ivf_nlist", 64) < 64
    assert bool(plan.reasons) == (effective != method or lowered)
    assert len(caplog.records) == len(plan.reasons)  # every fallback is logged
    keys = _keys(count)
    index = build_index(keys, plan)
    restored = index_from_bytes(index_to_bytes(index), plan)
    _, found = restored.search(keys[:5], 1)
    assert restored.ntotal == count
    exact = plan.effective in ("IndexFlatL2", "IndexHNSWFlat", "IndexIVFFlat")
    if exact:
        assert list(found[:, 0]) == [0, 1, 2, 3, 4]


def test_pq_m_must_divide_key_width() -> None:
    plan = plan_index("IndexPQ", 10_000, 576, FinetuneArgs(index_pq_m=7))
    assert plan.effective == "IndexFlatL2"
    assert "does not divide" in plan.reasons[0]
