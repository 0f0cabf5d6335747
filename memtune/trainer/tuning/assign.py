"""Which expert each trained question uses: its own, or a shared one when questions outnumber the cap.

Storage and memory grow with the experts that exist (at most one per question), never with `index_max_size`.
Above the cap, k-means over the keys groups similar questions into `index_max_size` shared experts, and routing
still finds the nearest *question*, so the gate and the mixing weights keep their meaning.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)


def assign_experts(keys: torch.Tensor, cap: int, seed: int) -> torch.Tensor:
    """slot -> expert id, (N,) int64, with ids 0..E-1 all used and E = min(N, cap)."""
    count = len(keys)
    if count <= cap:
        return torch.arange(count)
    log.info("%d questions share %d experts (index_max_size); clustering their keys", count, cap)
    kmeans = faiss.Kmeans(keys.shape[1], cap, niter=20, seed=seed, verbose=False)
    data = np.ascontiguousarray(keys.numpy(), dtype=np.float32)
    kmeans.train(data)
    _, assignment = kmeans.index.search(data, 1)  # (N, 1)
    # Renumber so that empty clusters leave no unused (and so untrained, yet stored) expert behind.
    _, dense = np.unique(assignment[:, 0], return_inverse=True)
    return torch.from_numpy(dense.astype(np.int64))
