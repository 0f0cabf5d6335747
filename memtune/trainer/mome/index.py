"""faiss indexes over routing keys: build what `index_method` asks for, or fall back explicitly.

Keys are L2-normalised, so squared L2 distances lie in [0, 4]. Rules (also in docs/trainer-contract.md):
- IndexFlatL2: always exact.
- IVF (IndexIVFFlat, IndexIVFPQ): k-means needs about 39 keys per list, so nlist shrinks to keys // 39; below 2
  lists IVF is pointless and the index falls back to its non-IVF form.
- PQ (IndexPQ, IndexIVFPQ, IndexHNSWPQ): needs 39 * 2**nbits training keys and `index_pq_m` dividing the key
  width; otherwise it falls back to the same structure with uncompressed (Flat) vectors.
- HNSW (IndexHNSWFlat, IndexHNSWPQ): needs no training.
Every fallback logs a warning; `IndexPlan.effective` and `.reasons` are recorded in the run's artifacts.
Indexes are stored with faiss.serialize_index (bytes, never pickle) and read back only after the manifest checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faiss
import numpy as np

from memtune.spec import FinetuneArgs

log = logging.getLogger(__name__)

# k-means wants this many training points per centroid (faiss warns below it).
POINTS_PER_CENTROID = 39


@dataclass
class IndexPlan:
    """What will be built: the requested method, the effective one and its parameters, and why they differ."""

    requested: str
    effective: str
    params: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "effective": self.effective,
            "params": self.params,
            "reasons": self.reasons,
        }


def plan_index(method: str, count: int, dim: int, args: FinetuneArgs) -> IndexPlan:
    """Decide the index that `count` keys of width `dim` can support."""
    plan = IndexPlan(requested=method, effective=method)
    uses_pq = method in ("IndexPQ", "IndexIVFPQ", "IndexHNSWPQ")
    if uses_pq:
        need = POINTS_PER_CENTROID * 2**args.index_pq_nbits
        if dim % args.index_pq_m:
            plan.reasons.append(f"index_pq_m={args.index_pq_m} does not divide the key width {dim}")
        elif count < need:
            plan.reasons.append(f"PQ with nbits={args.index_pq_nbits} needs {need} keys to train, got {count}")
        else:
            plan.params.update(pq_m=args.index_pq_m, pq_nbits=args.index_pq_nbits)
        if plan.reasons:
            plan.effective = {"IndexPQ": "IndexFlatL2", "IndexIVFPQ": "IndexIVFFlat", "IndexHNSWPQ": "IndexHNSWFlat"}[
                method
            ]
    if plan.effective in ("IndexIVFFlat", "IndexIVFPQ"):
        nlist = min(args.index_ivf_nlist, count // POINTS_PER_CENTROID)
        if nlist < 2:
            plan.reasons.append(f"IVF needs {2 * POINTS_PER_CENTROID} keys for 2 lists, got {count}")
            plan.effective = "IndexFlatL2" if plan.effective == "IndexIVFFlat" else "IndexPQ"
        else:
            if nlist < args.index_ivf_nlist:
                plan.reasons.append(f"index_ivf_nlist lowered from {args.index_ivf_nlist} to {nlist} for {count} keys")
            plan.params.update(ivf_nlist=nlist, ivf_nprobe=min(args.index_ivf_nprobe, nlist))
    if plan.effective in ("IndexHNSWFlat", "IndexHNSWPQ"):
        plan.params.update(
            hnsw_m=args.index_hnsw_m,
            hnsw_efConstruction=args.index_hnsw_efConstruction,
            hnsw_efSearch=args.index_hnsw_efSearch,
        )
    for reason in plan.reasons:
        log.warning("index %s -> %s: %s", method, plan.effective, reason)
    return plan


def build_index(keys: np.ndarray, plan: IndexPlan) -> faiss.Index:
    """Train (where needed) and fill the planned index with `keys` (N, d) float32."""
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    dim = keys.shape[1]
    p = plan.params
    if plan.effective == "IndexFlatL2":
        index = faiss.IndexFlatL2(dim)
    elif plan.effective == "IndexPQ":
        index = faiss.IndexPQ(dim, p["pq_m"], p["pq_nbits"])
    elif plan.effective in ("IndexIVFFlat", "IndexIVFPQ"):
        quantizer = faiss.IndexFlatL2(dim)
        if plan.effective == "IndexIVFFlat":
            index = faiss.IndexIVFFlat(quantizer, dim, p["ivf_nlist"])
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, p["ivf_nlist"], p["pq_m"], p["pq_nbits"])
        index.nprobe = p["ivf_nprobe"]
    elif plan.effective in ("IndexHNSWFlat", "IndexHNSWPQ"):
        if plan.effective == "IndexHNSWFlat":
            index = faiss.IndexHNSWFlat(dim, p["hnsw_m"])
        else:
            index = faiss.IndexHNSWPQ(dim, p["pq_m"], p["hnsw_m"], p["pq_nbits"])
        index.hnsw.efConstruction = p["hnsw_efConstruction"]
        index.hnsw.efSearch = p["hnsw_efSearch"]
    else:
        raise ValueError(f"unknown index method {plan.effective!r}")
    if not index.is_trained:
        index.train(keys)
    index.add(keys)
    return index


def index_to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def index_from_bytes(data: bytes, plan: IndexPlan) -> faiss.Index:
    """Deserialise (after checksum verification) and restore the search-time parameters."""
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if "ivf_nprobe" in plan.params:
        faiss.extract_index_ivf(index).nprobe = plan.params["ivf_nprobe"]
    if "hnsw_efSearch" in plan.params:
        index.hnsw.efSearch = plan.params["hnsw_efSearch"]
    return index
