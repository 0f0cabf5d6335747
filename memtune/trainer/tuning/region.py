"""Training forward over answer regions only, attending to the cached prefix (see encode.py and experts.py).

A micro-batch of B examples becomes
    prefix k/v  (L, B, kv_heads, P, hd)  left-padded, so every prompt ends at column P
    region      (B, A, d)                right-padded hidden states entering the first expert layer
    attend      (B, P + A)               key columns that are real tokens (causality and windows: architecture.py)
and only the expert layers, the final norm and the LM head (at real answer positions) run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from memtune.trainer.mome.architecture import architecture
from memtune.trainer.tuning.encode import Encoded


@dataclass
class RegionBatch:
    prefix_k: torch.Tensor
    """(L, B, kv_heads, P, hd)"""
    prefix_v: torch.Tensor
    region: torch.Tensor
    """(B, A, d)"""
    positions: torch.Tensor
    """(B, A) absolute positions of the region tokens (prompt length - 1 onwards)."""
    attend: torch.Tensor
    """(B, P + A) bool: the prefix columns that are not padding, then every region column."""
    targets: torch.Tensor
    """(B, A) with -100 on padding."""

    def to(self, device: torch.device) -> RegionBatch:
        """The batch on `device` (the model's): examples come from the host-side store."""
        return RegionBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


def collate(examples: Sequence[Encoded]) -> RegionBatch:
    batch = len(examples)
    layers, heads, _, head_dim = examples[0].prefix_k.shape
    p_max = max(e.prefix_k.shape[2] for e in examples)
    a_max = max(len(e.targets) for e in examples)
    prefix_k = examples[0].prefix_k.new_zeros(layers, batch, heads, p_max, head_dim)
    prefix_v = torch.zeros_like(prefix_k)
    region = examples[0].region.new_zeros(batch, a_max, examples[0].region.shape[-1])
    targets = torch.full((batch, a_max), -100, dtype=torch.long)
    prefix_valid = torch.zeros(batch, p_max, dtype=torch.bool)
    positions = torch.zeros(batch, a_max, dtype=torch.long)
    for row, example in enumerate(examples):
        p, a = example.prefix_k.shape[2], len(example.targets)
        prefix_k[:, row, :, p_max - p :] = example.prefix_k
        prefix_v[:, row, :, p_max - p :] = example.prefix_v
        prefix_valid[row, p_max - p :] = True
        region[row, :a] = example.region
        targets[row, :a] = example.targets
        positions[row] = torch.arange(p, p + a_max)
    attend = torch.cat([prefix_valid, torch.ones(batch, a_max, dtype=torch.bool)], 1)  # (B, P + A)
    return RegionBatch(prefix_k, prefix_v, region, positions, attend, targets)


class _PrefixCache:
    """Duck-typed cache for the decoder layers: prepends the cached prefix k/v of layers `first` and up."""

    def __init__(self, batch: RegionBatch, first: int):
        self._first = first
        self._batch = batch

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        slot = layer_idx - self._first
        return (
            torch.cat([self._batch.prefix_k[slot], keys], dim=2),  # (B, kv_heads, P + A, hd)
            torch.cat([self._batch.prefix_v[slot], values], dim=2),
        )


def region_loss(model: nn.Module, first: int, batch: RegionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean cross-entropy over answer tokens (B,) and whether greedy decoding reproduces the whole
    answer (B,) bool (every answer token is the argmax). Experts must already be active on the hooks."""
    arch = architecture(model)
    hidden = arch.run_blocks(
        batch.region, batch.positions, batch.attend, _PrefixCache(batch, first), first
    )  # (B, A, d)
    valid = batch.targets >= 0  # (B, A)
    logits = arch.logits(hidden[valid]).float()  # (n_valid, vocab): the head only where loss needs it
    token_loss = nn.functional.cross_entropy(logits, batch.targets[valid], reduction="none")  # (n_valid,)
    per_row = token_loss.new_zeros(valid.shape).masked_scatter(valid, token_loss)  # (B, A)
    wrong = valid.new_zeros(valid.shape).masked_scatter(valid, logits.argmax(-1) != batch.targets[valid])
    return per_row.sum(1) / valid.sum(1), ~wrong.any(1)
