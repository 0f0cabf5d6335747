"""Routing: prompt key -> faiss top-k slots -> experts and mixing weights -> distance gate.

Every trained question owns one slot (its key). A slot points at an expert: its own, or a shared one when the
questions outnumber `index_max_size` (see tuning/assign.py). For a query key q:

    slots, _ = index.search(q, k)                      # (B, k) nearest trained questions
    dist     = ||q - keys[slots]||²                    # (B, k) exact, even when the index is approximate (PQ)
    allowed  = anchors.allows(slots, prompts)          # (B, k) the prompt holds enough of that question's anchors
    dist     = dist where allowed, else inf            # a question whose anchors are missing cannot answer
    weights  = softmax(-dist / temperature)            # (B, k) the nearest question dominates
    gated    = dist[:, 0] > threshold                  # (B,)  too far from every trained question: base model

When the nearest allowed question has anchor words (the prompt holds them), its gate is `anchored_threshold`: set at
calibration to the distance of the nearest everyday prompt, since the rare words already vouch for the match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from memtune.trainer.mome.anchors import Anchors
from memtune.trainer.mome.experts import Route
from memtune.trainer.mome.keys import PromptTokens


@dataclass
class Routing:
    """The routing decision for a batch of prompts."""

    route: Route
    distance: torch.Tensor
    """(B,) squared L2 distance to the nearest trained question (whether or not its anchors matched)."""
    gated: torch.Tensor
    """(B,) bool: True where the experts stay off and the base model answers."""

    def describe(self, row: int) -> dict[str, object]:
        """The `route` field users see next to an answer."""
        return {
            "experts": [int(e) for e in self.route.experts[row]],
            "distance": round(float(self.distance[row]), 6),
            "gated": bool(self.gated[row]),
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
        anchors: Anchors | None = None,
        anchored_threshold: float | None = None,
    ):
        """keys (N, d) normalised; slot_expert (N,) int64; threshold None means never gate (anchors included).

        A nearest question whose anchor words the prompt contains is gated at `anchored_threshold` instead (when set):
        its rare words are evidence of its own, so a looser reformulation may still reach it."""
        self.keys = keys
        self.slot_expert = slot_expert
        self.index = index
        self.k = min(k, len(keys))
        self.threshold = threshold
        self.anchored_threshold = anchored_threshold
        self.temperature = temperature
        self.anchors = anchors if threshold is not None else None

    def __call__(
        self,
        query: torch.Tensor,
        prompts: Sequence[str] | None = None,
        *,
        tokens: Sequence[PromptTokens] | None = None,
        token_nats: Sequence[Sequence[float]] | None = None,
    ) -> Routing:
        """query (B, d) normalised keys of `prompts` (the anchor check needs their text; None skips it).

        tokens: each prompt's chat-prompt tokens; token_nats: each of those tokens' surprisal under the base model
        (nats, 0.0 for the first), both from generation's prefill (model.py); None where the caller has none
        (training routes its own keys). Accepted for the gate; not used yet."""
        _, slots = self.index.search(np.ascontiguousarray(query.numpy(), dtype=np.float32), self.k)  # (B, k)
        slots_t = torch.from_numpy(slots).clamp(min=0)  # -1 marks "fewer than k found" (IVF/HNSW); reuse slot 0
        dist = ((query[:, None, :] - self.keys[slots_t]) ** 2).sum(-1)  # (B, k)
        dist = dist.masked_fill(torch.from_numpy(slots) < 0, float("inf"))
        order = dist.argsort(dim=1)  # approximate indexes may return neighbours out of order
        dist, slots_t = dist.gather(1, order), slots_t.gather(1, order)
        closest = dist[:, 0].clone()
        limit = torch.full_like(closest, float("inf") if self.threshold is None else self.threshold)  # (B,)
        if self.anchors is not None and prompts is not None:
            dist = dist.masked_fill(~self.anchors.allows(slots_t, prompts), float("inf"))
            order = dist.argsort(dim=1, stable=True)
            dist, slots_t = dist.gather(1, order), slots_t.gather(1, order)
            if self.anchored_threshold is not None:
                limit = torch.where(self.anchors.anchored(slots_t[:, 0]), self.anchored_threshold, limit)
        nearest = dist[:, 0]
        weights = torch.softmax(-(dist - nearest[:, None]) / self.temperature, dim=1).nan_to_num(0.0)  # (B, k)
        gated = ~torch.isfinite(nearest)  # the index found nothing, or no candidate's anchors are in the prompt
        gated |= nearest > limit
        weights = weights.masked_fill(gated[:, None], 0.0)
        return Routing(Route(self.slot_expert[slots_t], weights), closest, gated)
