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

from memtune.trainer.mome.architecture import architecture


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


def mix_experts(a: torch.Tensor, b: torch.Tensor, route: Route) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold each row's top-k experts and weights into one rank-k·r adapter per layer, once per route.

    a (E, L, d, r), b (E, L, r, d) -> a_mix (L, B, d, k·r), b_mix (L, B, k·r, d) with
    x @ a_mix[l] @ b_mix[l] == sum_k w_k · (x @ A[e_k, l]) @ B[e_k, l]: two matmuls per layer and token.
    """
    a_sel = a[route.experts]  # (B, k, L, d, r)
    b_sel = b[route.experts] * route.weights[:, :, None, None, None]  # (B, k, L, r, d)
    rows, k, layers, hidden, rank = a_sel.shape
    a_mix = a_sel.permute(2, 0, 3, 1, 4).reshape(layers, rows, hidden, k * rank)  # (L, B, d, k·r)
    b_mix = b_sel.permute(2, 0, 1, 3, 4).reshape(layers, rows, k * rank, hidden)  # (L, B, k·r, d)
    return a_mix, b_mix


class ExpertHooks:
    """Forward hooks on the MLPs of `layer_ids` that add the routed experts' output while a route is set.

    With no route set the hooks return None, so the model is bit-for-bit the base model. A route may be set in the
    middle of a forward pass (generation routes from a hook at the key layer, below every expert layer).
    """

    def __init__(self, model: nn.Module, layer_ids: list[int]):
        self.layer_ids = layer_ids
        self._state: tuple[torch.Tensor, torch.Tensor, bool] | None = None
        arch = architecture(model)
        self._handles = [
            arch.mlp(layer_id).register_forward_hook(self._make_hook(slot)) for slot, layer_id in enumerate(layer_ids)
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def set_route(self, a: torch.Tensor, b: torch.Tensor, route: Route, *, last_only: bool) -> None:
        """Apply experts `a` (E, L, d, r) / `b` (E, L, r, d) per `route` until `clear()`.

        last_only: add the experts only at each chunk's last position (generation: the prefill's last prompt token,
        then every decoded token); otherwise at every position (training runs on the answer region only).
        """
        self._state = (*mix_experts(a, b, route), last_only)

    def clear(self) -> None:
        self._state = None

    @contextlib.contextmanager
    def active(self, a: torch.Tensor, b: torch.Tensor, route: Route, *, last_only: bool) -> Iterator[None]:
        """`set_route` for the duration of the block."""
        self.set_route(a, b, route, last_only=last_only)
        try:
            yield
        finally:
            self.clear()

    def _make_hook(self, slot: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if self._state is None:
                return None
            a_mix, b_mix, last_only = self._state
            x = args[0][:, -1:] if last_only else args[0]  # (B, T, d)
            # experts compute in their own dtype (float32) whatever the base model's; a no-op when they agree
            delta = ((x.to(a_mix.dtype) @ a_mix[slot]) @ b_mix[slot]).to(output.dtype)  # (B, T, k·r) -> (B, T, d)
            if last_only and output.shape[1] > 1:
                return torch.cat([output[:, :-1], output[:, -1:] + delta], dim=1)
            return output + delta

        return hook
