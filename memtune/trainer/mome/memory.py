"""A trained memory: everything generation needs on top of the frozen base model.

One object ties the pieces together so that training, artifacts and generation agree on them:
the layers (key layer, expert layers), the expert bank (bank.py: in RAM, or read lazily from a run), the routing
keys and their faiss index, and the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import torch

from memtune.trainer.mome.anchors import Anchors
from memtune.trainer.mome.bank import ExpertBank
from memtune.trainer.mome.gate import Gate
from memtune.trainer.mome.index import IndexPlan
from memtune.trainer.mome.router import Router


@dataclass
class MemoryLayout:
    """Where the memory sits in the base model and how it routes; saved as JSON with the run."""

    key_layer: int
    """Routing keys are the mean input of this decoder layer over the question's tokens."""
    expert_layers: list[int]
    """Decoder layers whose MLP output the experts add to (sorted, all above key_layer)."""
    rank: int
    index_k: int
    threshold: float | None
    """Gate: squared L2 distance above which experts stay off; None = never gate."""
    temperature: float
    """Softmax temperature of the mixing weights over the top-k distances."""
    anchored_threshold: float | None = None
    """Looser gate for a question whose anchor words the prompt contains (None: `threshold` for every question)."""

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Memory:
    layout: MemoryLayout
    bank: ExpertBank
    """The experts: a TensorBank while training, a LazyBank when loaded for inference."""
    keys: torch.Tensor
    """(N, d) normalised keys of the trained questions."""
    slot_expert: torch.Tensor
    """(N,) expert of each question."""
    index: faiss.Index
    plan: IndexPlan
    anchors: Anchors | None = None
    """Each question's anchor words (the gate's second check); None: distance gate only."""

    @property
    def num_experts(self) -> int:
        return self.bank.count

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """{"A": (E, L, d, r), "B": (E, L, r, d)} in RAM: a TensorBank's own dict (training updates it in place);
        a LazyBank reads the whole bank for it."""
        return self.bank.tensors()

    def router(self) -> Router:
        return Router(
            self.keys,
            self.slot_expert,
            self.index,
            k=self.layout.index_k,
            threshold=self.layout.threshold,
            temperature=self.layout.temperature,
            gate=None
            if self.anchors is None or self.layout.threshold is None
            else Gate(self.anchors, self.layout.threshold, self.layout.anchored_threshold),
        )
