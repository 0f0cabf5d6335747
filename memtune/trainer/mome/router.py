"""Routing: prompt key -> faiss candidates -> the gate -> experts and mixing weights.

Every trained question owns one slot (its key). A slot points at an expert: its own, or a shared one when the
questions outnumber `index_max_size` (see tuning/assign.py). For a batch of query keys q (B, d):

    slots, _ = index.search(q, c)                      # (B, c) nearest trained questions, c = max(k, CANDIDATES)
    dist     = ||q - keys[slots]||²                    # (B, c) exact, even when the index is approximate (PQ)
    chosen   = gate.decide(slots, dist, evidence)      # per row: the slot that may answer, or -1 (gate.py)
    experts  = slot_expert[chosen], weight 1           # (B, 1); a closed gate weighs 0: the base model answers

Without a gate (`memory.gate: always`, or `anchorShare: 0`, which leaves the distance alone to decide) the top k
candidates are mixed with softmax(-(dist - dist_min) / temperature) weights, and rows beyond the distance
threshold (if any) are gated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from memtune.trainer.mome.anchors import evidence
from memtune.trainer.mome.experts import Route
from memtune.trainer.mome.gate import Gate

# Candidates the gate weighs per prompt: the right question can sit behind a few near namesakes.
CANDIDATES = 8


@dataclass
class Routing:
    """The routing decision for a batch of prompts."""

    route: Route
    distance: torch.Tensor
    """(B,) squared L2 distance to the nearest trained question (whether or not the gate chose it)."""
    gated: torch.Tensor
    """(B,) bool: True where the experts stay off and the base model answers."""
    reasons: list[str]
    """Per row: "open", "far", "entity", "relation" (gate.py), or "ungated" without a gate."""

    def describe(self, row: int) -> dict[str, object]:
        """The `route` field users see next to an answer."""
        return {
            "experts": [int(e) for e in self.route.experts[row]],
            "distance": round(float(self.distance[row]), 6),
            "gated": bool(self.gated[row]),
            "reason": self.reasons[row],
        }


class Router:
    def __init__(
        self,
        keys: torch.Tensor,
        slot_expert: torch.Tensor,
        index: faiss.Index,
        *,
        k: int,
        threshold: float | None,
        temperature: float,
        gate: Gate | None = None,
    ):
        """keys (N, d) normalised; slot_expert (N,) int64; threshold None means never gate; `gate` (when set)
        decides instead of the distance alone."""
        self.keys = keys
        self.slot_expert = slot_expert
        self.index = index
        self.k = min(k, len(keys))
        self.threshold = threshold
        self.temperature = temperature
        self.gate = gate if threshold is not None else None

    def __call__(self, query: torch.Tensor, prompts: Sequence[str] | None = None) -> Routing:
        """query (B, d) normalised keys of `prompts` (the gate needs their text; None: distance only).

        A prompt's evidence is its units (anchors.evidence without surprisal): its foreign anchors are the units
        that are anchors of some trained question. The prompt's own surprisal is not used: in a language the base
        model knows poorly every reworded word is surprising, and rewordings would read as other names."""
        gate = self.gate if prompts is not None else None
        count = min(max(self.k, CANDIDATES), len(self.keys)) if gate is not None else self.k
        _, found = self.index.search(np.ascontiguousarray(query.numpy(), dtype=np.float32), count)  # (B, c)
        slots = torch.from_numpy(found).clamp(min=0)  # -1 marks "fewer than c found" (IVF/HNSW); reuse slot 0
        dist = ((query[:, None, :] - self.keys[slots]) ** 2).sum(-1)  # (B, c)
        dist = dist.masked_fill(torch.from_numpy(found) < 0, float("inf"))
        order = dist.argsort(dim=1)  # approximate indexes may return neighbours out of order
        dist, slots = dist.gather(1, order), slots.gather(1, order)
        closest = dist[:, 0].clone()
        if gate is None:
            limit = float("inf") if self.threshold is None else self.threshold
            weights = torch.softmax(-(dist - closest[:, None]) / self.temperature, dim=1).nan_to_num(0.0)  # (B, k)
            gated = ~torch.isfinite(closest) | (closest > limit)  # (B,)
            weights = weights.masked_fill(gated[:, None], 0.0)
            reasons = ["far" if g else "ungated" for g in gated.tolist()]
            return Routing(Route(self.slot_expert[slots], weights), closest, gated, reasons)
        assert prompts is not None
        decisions = [
            gate.decide(slots[row].tolist(), dist[row].tolist(), evidence(text)) for row, text in enumerate(prompts)
        ]
        # a closed gate still names the nearest question's expert (at weight 0): which memory was close
        chosen = torch.tensor([d.slot if d.slot >= 0 else int(slots[row, 0]) for row, d in enumerate(decisions)])
        gated = torch.tensor([d.slot < 0 for d in decisions])  # (B,)
        weights = (~gated).to(dist.dtype)[:, None]  # (B, 1)
        return Routing(Route(self.slot_expert[chosen][:, None], weights), closest, gated, [d.reason for d in decisions])
