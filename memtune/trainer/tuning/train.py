"""Sparse training of the memory experts on cached answer regions.

A step is one optimizer update over `batchSize * gradient_accumulation_steps` examples drawn from a *working set*:
new questions join it as earlier ones are learned (answer loss below `memory.stopLoss` *and* every answer token the
argmax, so a long answer with one wrong token is not "learned" by its low mean loss) or have had `MAX_STAY`
consecutive steps, so each expert is trained to convergence in a run of consecutive updates instead of once per
epoch, and one stubborn question cannot hold its place forever. When every question has passed through,
a no-grad check re-admits any whose loss rose (shared experts can disturb each other); training stops when all are
below `stopLoss` or after `max_steps`. Only the experts routed to by a step's examples get gradients and state.

With several ranks (see distributed.py) a step is the same step: each rank computes the facts of the working set it
owns, gradients and losses are summed across ranks, and every rank applies the same update. `TrainState` is all
the schedule keeps between steps, so a checkpoint of it plus the bank and the optimizer resumes a run exactly.
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
from memtune.trainer.mome.experts import ExpertHooks, Route
from memtune.trainer.tuning.distributed import SINGLE, RankGroup
from memtune.trainer.tuning.encode import Encoded
from memtune.trainer.tuning.optim import SparseOptimizer, make_optimizer
from memtune.trainer.tuning.region import collate, region_loss

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
class TrainState:
    """Where the schedule stands after `step` updates: exactly what a resumed run needs besides bank and optimizer."""

    step: int
    pending: deque[int]
    """Questions waiting to join the working set, in order."""
    active: list[int]
    """The working set."""
    stay: torch.Tensor
    """(N,) int64 consecutive steps each question has spent in the working set."""
    losses: torch.Tensor
    """(N,) latest answer loss of each question (inf before its first step)."""
    curve: list[StepReport] = field(default_factory=list)

    @classmethod
    def fresh(cls, count: int) -> TrainState:
        return cls(0, deque(range(count)), [], torch.zeros(count, dtype=torch.long), torch.full((count,), math.inf))


@dataclass
class TrainSetup:
    model: nn.Module
    hooks: ExpertHooks
    first_layer: int
    """Lowest expert layer: region states enter here."""
    examples: Sequence[Encoded | None]
    """Indexed by question; only the entries this rank owns are needed (others may be None)."""
    routes: Route
    """(N, k) experts and weights of each example, as generation will route its question."""
    params: dict[str, torch.Tensor]
    """Bank tensors {"A": (E, L, d, r), "B": (E, L, r, d)}, updated in place."""


def _micro_batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def _until_exact(loss: torch.Tensor, exact: torch.Tensor, stop_loss: float) -> torch.Tensor:
    """Answer losses (B,) with the inexact ones raised to at least `stop_loss`: the schedule's notion of unlearned."""
    return torch.where(exact, loss, loss.clamp(min=stop_loss))


def _losses(
    setup: TrainSetup, ids: list[int], params: dict[str, torch.Tensor], experts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example answer loss (B,) and exactness (B,), on the bank's device, with `experts` (B, k) indexing into
    `params`."""
    device = params["A"].device
    route = Route(experts.to(device), setup.routes.weights[ids].to(device))
    batch = collate([setup.examples[i] for i in ids]).to(device)
    with setup.hooks.active(params["A"], params["B"], route, last_only=False):
        return region_loss(setup.model, setup.first_layer, batch)


@torch.no_grad()
def evaluate(setup: TrainSetup, batch_size: int, group: RankGroup = SINGLE) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) answer loss and (N,) exactness of every example under the current bank, on every rank."""
    count = len(setup.examples)
    mine = group.owned(list(range(count)))
    loss, exact = torch.zeros(count), torch.zeros(count)  # (N,), (N,): each rank fills the questions it owns
    for chunk in _micro_batches(mine, batch_size):
        chunk_loss, chunk_exact = _losses(setup, chunk, setup.params, setup.routes.experts[chunk])
        loss[chunk], exact[chunk] = chunk_loss.cpu(), chunk_exact.cpu().to(exact.dtype)
    return group.sum_(loss), group.sum_(exact) > 0.5


def train_experts(
    setup: TrainSetup,
    args: FinetuneArgs,
    batch_size: int,
    stop_loss: float,
    on_step: Callable[[StepReport], None] | None = None,
    on_checkpoint: Callable[[TrainState, SparseOptimizer], None] | None = None,
    *,
    group: RankGroup = SINGLE,
    optimizer: SparseOptimizer | None = None,
    state: TrainState | None = None,
    store_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Run up to `args.max_steps` sparse optimizer updates; see the module docstring for the schedule.

    Pass the `optimizer` and `state` of a checkpoint to resume; `setup.params` must then hold its bank.
    `store_dtype` (e.g. bfloat16): the bank is rounded to it before the final evaluation, so the recall reported
    is that of the weights the run stores.
    """
    optimizer = optimizer or make_optimizer(args.optim, setup.params, args.learning_rate)
    per_step = batch_size * args.gradient_accumulation_steps
    count = len(setup.examples)
    state = state or TrainState.fresh(count)
    pending, stay, curve = state.pending, state.stay, state.curve
    started = time.perf_counter() - (curve[-1].seconds if curve else 0.0)
    device = setup.params["A"].device
    while state.step < args.max_steps:
        while len(state.active) < per_step and pending:
            state.active.append(pending.popleft())
        if not state.active:
            state.losses = _until_exact(*evaluate(setup, per_step, group), stop_loss)
            relapsed = (state.losses >= stop_loss).nonzero()[:, 0].tolist()
            if not relapsed:
                log.info("all %d questions below stop loss %.3g after %d steps", count, stop_loss, state.step)
                break
            pending.extend(relapsed)
            continue
        ids = list(state.active)
        rows, local = torch.unique(setup.routes.experts[ids], return_inverse=True)  # (R,), (S, k)
        rows = rows.to(device)
        leaves = {name: tensor[rows].clone().requires_grad_() for name, tensor in setup.params.items()}  # (R, ...)
        mine = [position for position, question in enumerate(ids) if group.owns(question)]
        step_losses = torch.zeros(len(ids))  # (S,): each rank fills the questions it owns
        for chunk in _micro_batches(mine, batch_size):
            chunk_ids = [ids[i] for i in chunk]
            batch_losses, batch_exact = _losses(setup, chunk_ids, leaves, local[chunk])  # (b,), (b,)
            scheduled = _until_exact(batch_losses.detach().cpu(), batch_exact.cpu(), stop_loss)  # (b,)
            # Learned questions add no gradient: pushing them further only overshoots.
            unlearned = (scheduled >= stop_loss).to(batch_losses.dtype).to(device)  # (b,)
            ((batch_losses * unlearned).sum() / len(ids)).backward()
            step_losses[chunk] = scheduled
        losses = state.losses
        losses[ids] = group.sum_(step_losses)
        grads = {  # (R, ...) summed over ranks; a rank that owned none of the step's questions adds zeros
            name: group.sum_(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
            for name, leaf in leaves.items()
        }
        # Experts that only served learned questions got no gradient; stepping them would still move Adam's momentum.
        touched = torch.stack([g.flatten(1).abs().amax(1) for g in grads.values()]).amax(0) > 0  # (R,)
        if touched.any():
            optimizer.step(rows[touched], {name: g[touched] for name, g in grads.items()})
        state.step += 1
        stay[ids] += 1
        state.active = [i for i in ids if losses[i] >= stop_loss and stay[i] < MAX_STAY]
        for i in ids:
            if losses[i] >= stop_loss and stay[i] >= MAX_STAY:
                stay[i] = 0
                pending.append(i)
        report = StepReport(
            step=state.step,
            max_steps=args.max_steps,
            loss=float(losses[ids].mean()),
            learned=int((losses < stop_loss).sum()),
            seconds=time.perf_counter() - started,
        )
        curve.append(report)
        if on_step is not None:
            on_step(report)
        if on_checkpoint is not None and state.step % args.save_steps == 0:
            on_checkpoint(state, optimizer)
    if store_dtype is not None:
        with torch.no_grad():
            for tensor in setup.params.values():
                tensor.copy_(tensor.to(store_dtype).to(tensor.dtype))
    final, exact = evaluate(setup, per_step, group)
    return TrainResult(steps=state.step, final_loss=float(final.mean()), losses=final, exact=exact, curve=curve)
