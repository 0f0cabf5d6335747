"""Memory experts: a bank of low-rank adapters on the MLPs of the top decoder layers, applied batched.

Expert `e` adds `w · (x @ A[e, l]) @ B[e, l]` to the MLP output of expert layer `l`, where `x` is the MLP's
(normalised) input. Each row of a batch mixes its own top-k experts with its own weights; a gated row has all
weights 0 and gets exactly the base model's output.

Experts act only on the *answer region*: the prompt's last token and every generated token. The prompt's other
positions keep the base model's hidden states at every layer, so (1) training can cache their keys/values once and
run the top layers on a dozen answer tokens instead of the whole chat prompt, and (2) generation's prefill is the
base model except at its last position.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from memtune.trainer.models import decoder_layers


@dataclass
class Route:
    """Which experts each row of a batch mixes: indices into the active weight tensors, and their weights."""

    experts: torch.Tensor
    """(B, k) int64."""
    weights: torch.Tensor
    """(B, k) float; a gated row is all zeros."""


def init_experts(
    count: int, layers: int, hidden: int, rank: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """LoRA initialisation: A random (scaled so x@A has unit-ish variance), B zero so a new expert changes nothing."""
    a = torch.randn(count, layers, hidden, rank, generator=generator) / math.sqrt(hidden)  # (E, L, d, r)
    b = torch.zeros(count, layers, rank, hidden)  # (E, L, r, d)
    return {"A": a, "B": b}


class ExpertHooks:
    """Forward hooks on the MLPs of `layer_ids` that add the routed experts' output while a route is active.

    Outside `active(...)` the hooks return None, so the model is bit-for-bit the base model.
    """

    def __init__(self, model: nn.Module, layer_ids: list[int]):
        self.layer_ids = layer_ids
        self._state: tuple[torch.Tensor, torch.Tensor, Route, bool] | None = None
        layers = decoder_layers(model)
        self._handles = [
            layers[layer_id].mlp.register_forward_hook(self._make_hook(slot)) for slot, layer_id in enumerate(layer_ids)
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def active(self, a: torch.Tensor, b: torch.Tensor, route: Route, *, last_only: bool) -> Iterator[None]:
        """Apply experts `a` (E, L, d, r) / `b` (E, L, r, d) per `route`.

        last_only: add the experts only at each chunk's last position (generation: the prefill's last prompt token,
        then every decoded token); otherwise at every position (training runs on the answer region only).
        """
        self._state = (a, b, route, last_only)
        try:
            yield
        finally:
            self._state = None

    def _make_hook(self, slot: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if self._state is None:
                return None
            a, b, route, last_only = self._state
            x = args[0][:, -1:] if last_only else args[0]  # (B, T, d)
            a_sel = a[route.experts, slot]  # (B, k, d, r)
            b_sel = b[route.experts, slot]  # (B, k, r, d)
            low = torch.einsum("btd,bkdr->bktr", x, a_sel) * route.weights[:, :, None, None]  # (B, k, T, r)
            delta = torch.einsum("bktr,bkrd->btd", low, b_sel)  # (B, T, d)
            if last_only:
                return torch.cat([output[:, :-1], output[:, -1:] + delta], dim=1)
            return output + delta

        return hook
