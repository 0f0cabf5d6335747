"""The gate's calibration as data: the probe keys a run measured, kept so that a child run extends them.

calibrate.py turns three sets of keys into the distance threshold: near probes (edits of a sample of up to
NEAR_SAMPLE trained questions) with the question each came from, and far probes (everyday prompts). A fresh run
measures all of them; a run grown from a parent (incremental.py) reuses the parent's. Far-probe keys depend only on
the base model and the key layer, a sampled question's near-probe keys only on that question, so what a child must
do is keep the sample a uniform one of its own questions:

1. forgotten questions leave the sample, which is topped up with questions drawn uniformly from the kept ones not in
   it (a uniform sample of a set, less some members, refilled uniformly from the rest, is uniform over what is left);
2. each added question enters by reservoir sampling (Vitter 1985, algorithm R): the n-th question of the set joins
   with probability k/n, in place of a uniformly chosen member.

Only questions that enter the sample cost base-model passes (one per edit of the question, up to the key layer), so
adding one fact to N costs k/N of a fresh calibration on average; the threshold is then `calibrate` over the child's
own keys, the formula a fresh run of the same questions applies, over a sample drawn as uniformly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from memtune.manifest import IntegrityError
from memtune.trainer.mome.base import LoadedModel
from memtune.trainer.mome.keys import question_keys
from memtune.trainer.tuning.calibrate import FAR_PROBES, NEAR_SAMPLE, Calibration, calibrate, near_probes


@dataclass
class ProbeKeys:
    """The keys a calibration measured."""

    owners: list[int]
    """(M,) the slot (trained question) each near probe was made from, ascending."""
    near: torch.Tensor
    """(M, d) float32 keys of the near probes."""
    far: torch.Tensor
    """(F, d) float32 keys of calibrate.FAR_PROBES."""

    @property
    def sampled(self) -> list[int]:
        """The sampled questions' slots, ascending."""
        return sorted(set(self.owners))

    def calibrate(self, keys: torch.Tensor) -> Calibration:
        """The threshold for trained keys (N, d): calibrate.calibrate over these probes."""
        return calibrate(keys, self.near, self.owners, self.far)

    def to_bytes(self) -> bytes:
        return save(
            {"owners": torch.tensor(self.owners, dtype=torch.int64), "near": self.near.contiguous(), "far": self.far}
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ProbeKeys:
        """Read what `to_bytes` wrote (after the run's checksums were verified); IntegrityError if it does not fit."""
        try:
            tensors = load(data)
            owners, near, far = tensors["owners"], tensors["near"], tensors["far"]
        except Exception as error:  # safetensors raises its own error types for a malformed header
            raise IntegrityError(f"{where}: unreadable calibration ({type(error).__name__}: {error})") from None
        if owners.ndim != 1 or near.ndim != 2 or len(owners) != len(near) or far.ndim != 2:
            raise IntegrityError(f"{where}: calibration tensors of shapes {owners.shape}, {near.shape}, {far.shape}")
        return cls(owners.tolist(), near.float(), far.float())


def measure(base: LoadedModel, questions: Sequence[str], key_layer: int, seed: int) -> ProbeKeys:
    """A fresh calibration's probes: edits of a seeded sample of `questions` (slot order) and the far prompts."""
    probes, owners = near_probes(questions, seed=seed)
    return ProbeKeys(owners, question_keys(base, probes, key_layer), question_keys(base, list(FAR_PROBES), key_layer))


def extend(
    parent: ProbeKeys,
    slot_of: dict[int, int],
    kept: Sequence[int],
    added: Sequence[int],
    questions: Sequence[str],
    base: LoadedModel,
    key_layer: int,
    rng: random.Random,
) -> tuple[ProbeKeys, int]:
    """The child's probes and how many questions newly entered the sample (each cost a base-model pass per edit).

    slot_of: parent slot -> child slot for every question the child keeps; kept: those child slots; added: the child
    slots of questions new to it, in the order they join; questions: the child's questions in slot order."""
    sample = [slot_of[slot] for slot in parent.sampled if slot in slot_of]
    inherited = set(sample)
    rest = [slot for slot in kept if slot not in inherited]
    sample += rng.sample(rest, min(NEAR_SAMPLE, len(kept)) - len(sample))
    seen = len(kept)
    for slot in added:  # reservoir sampling
        seen += 1
        if len(sample) < NEAR_SAMPLE:
            sample.append(slot)
        elif rng.random() < NEAR_SAMPLE / seen:
            sample[rng.randrange(NEAR_SAMPLE)] = slot
    rows: dict[int, list[torch.Tensor]] = {}
    for owner, key in zip(parent.owners, parent.near, strict=True):
        child = slot_of.get(owner)
        if child is not None:
            rows.setdefault(child, []).append(key)
    fresh = sorted(set(sample) - inherited)
    if fresh:
        probes, local = near_probes([questions[slot] for slot in fresh], limit=len(fresh))
        for owner, key in zip(local, question_keys(base, probes, key_layer), strict=True):
            rows.setdefault(fresh[owner], []).append(key)
    owners = [slot for slot in sorted(sample) for _ in rows[slot]]
    near = torch.stack([key for slot in sorted(sample) for key in rows[slot]])
    return ProbeKeys(owners, near, parent.far), len(fresh)
