"""Sparse training of the memory experts on cached answer regions.

A step is one optimizer update over `batchSize * gradient_accumulation_steps` examples drawn from a *working set*:
new questions join it as earlier ones are learned (answer loss below `memory.stopLoss`) or have had `MAX_STAY`
consecutive steps, so each expert is trained to convergence in a run of consecutive updates instead of once per
epoch, and one stubborn question cannot hold its place forever. When every question has passed through,
a no-grad check re-admits any whose loss rose (shared experts can disturb each other); training stops when all are
below `stopLoss` or after `max_steps`. Only the experts routed to by a step's examples get gradients and state.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from memtune.spec import FinetuneArgs
from memtune.trainer.encode import Encoded
from memtune.trainer.experts import ExpertHooks, Route
from memtune.trainer.optim import make_optimizer
from memtune.trainer.region import collate, region_loss

log = logging.getLogger(__name__)

# Consecutive steps a question may stay in the working set before yielding its place to the queue.
MAX_STAY = 50


@dataclass
class StepReport:
    step: int
    max_steps: int
    loss: float
    """Mean answer loss of this step's examples (before its update)."""
    learned: int
    """Questions below stopLoss so far."""
    seconds: float


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    """Mean answer loss over all questions at the end."""
    losses: torch.Tensor
    """(N,) final per-question loss."""
    exact: torch.Tensor
    """(N,) bool: greedy decoding reproduces the answer (teacher-forced argmax on every answer token)."""
    curve: list[StepReport] = field(default_factory=list)


@dataclass
class TrainSetup:
    model: nn.Module
    hooks: ExpertHooks
    first_layer: int
    """Lowest expert layer: region states enter here."""
    examples: Sequence[Encoded]
    routes: Route
    """(N, k) experts and weights of each example, as generation will route its question."""
    params: dict[str, torch.Tensor]
    """Bank tensors {"A": (E, L, d, r), "B": (E, L, r, d)}, updated in place."""


def _micro_batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def _losses(
    setup: TrainSetup, ids: list[int], params: dict[str, torch.Tensor], experts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example answer loss (B,) and exactness (B,) with `experts` (B, k) indexing into `params`."""
    route = Route(experts, setup.routes.weights[ids])
    with setup.hooks.active(params["A"], params["B"], route, last_only=False):
        return region_loss(setup.model, setup.first_layer, collate([setup.examples[i] for i in ids]))


@torch.no_grad()
def evaluate(setup: TrainSetup, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) answer loss and (N,) exactness of every example under the current bank."""
    ids = list(range(len(setup.examples)))
    results = [
        _losses(setup, chunk, setup.params, setup.routes.experts[chunk]) for chunk in _micro_batches(ids, batch_size)
    ]
    return torch.cat([loss for loss, _ in results]), torch.cat([exact for _, exact in results])


def train_experts(
    setup: TrainSetup,
    args: FinetuneArgs,
    batch_size: int,
    stop_loss: float,
    on_step: Callable[[StepReport], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Run up to `args.max_steps` sparse optimizer updates; see the module docstring for the schedule."""
    optimizer = make_optimizer(args.optim, setup.params, args.learning_rate)
    per_step = batch_size * args.gradient_accumulation_steps
    count = len(setup.examples)
    pending = deque(range(count))
    active: list[int] = []
    stay = torch.zeros(count, dtype=torch.long)
    losses = torch.full((count,), math.inf)
    curve: list[StepReport] = []
    started = time.perf_counter()
    step = 0
    while step < args.max_steps:
        while len(active) < per_step and pending:
            active.append(pending.popleft())
        if not active:
            losses, _ = evaluate(setup, per_step)
            relapsed = (losses >= stop_loss).nonzero()[:, 0].tolist()
            if not relapsed:
                log.info("all %d questions below stop loss %.3g after %d steps", count, stop_loss, step)
                break
            pending.extend(relapsed)
            continue
        ids = list(active)
        rows, local = torch.unique(setup.routes.experts[ids], return_inverse=True)  # (R,), (S, k)
        leaves = {name: tensor[rows].clone().requires_grad_() for name, tensor in setup.params.items()}  # (R, ...)
        for chunk in _micro_batches(list(range(len(ids))), batch_size):
            chunk_ids = [ids[i] for i in chunk]
            batch_losses, _ = _losses(setup, chunk_ids, leaves, local[chunk])  # (b,)
            # Questions already below stopLoss add no gradient: pushing them further only overshoots.
            unlearned = (batch_losses.detach() >= stop_loss).to(batch_losses.dtype)  # (b,)
            ((batch_losses * unlearned).sum() / len(ids)).backward()
            losses[chunk_ids] = batch_losses.detach()
        grads = {name: leaf.grad for name, leaf in leaves.items()}  # (R, ...)
        # Experts that only served learned questions got no gradient; stepping them would still move Adam's momentum.
        touched = torch.stack([g.flatten(1).abs().amax(1) for g in grads.values()]).amax(0) > 0  # (R,)
        if touched.any():
            optimizer.step(rows[touched], {name: g[touched] for name, g in grads.items()})
        step += 1
        stay[ids] += 1
        active = [i for i in ids if losses[i] >= stop_loss and stay[i] < MAX_STAY]
        for i in ids:
            if losses[i] >= stop_loss and stay[i] >= MAX_STAY:
                stay[i] = 0
                pending.append(i)
        report = StepReport(
            step=step,
            max_steps=args.max_steps,
            loss=float(losses[ids].mean()),
            learned=int((losses < stop_loss).sum()),
            seconds=time.perf_counter() - started,
        )
        curve.append(report)
        if on_step is not None:
            on_step(report)
        if on_checkpoint is not None and step % args.save_steps == 0:
            on_checkpoint(step)
    final, exact = evaluate(setup, per_step)
    return TrainResult(steps=step, final_loss=float(final.mean()), losses=final, exact=exact, curve=curve)
