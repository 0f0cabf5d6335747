"""Data parallel over ranks: who owns which fact, and the three collectives training needs.

With N ranks (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in every process it starts):

- fact `i` is owned by rank `i % N`: only its owner runs the frozen pass over it and keeps its answer region;
- the routing keys are all-gathered, so every rank builds the same index and the same expert assignment, and
  rank 0's routes are broadcast so no rank can disagree on them (faiss training is not promised bit-identical);
- a step is the same step as with one process: one optimizer update over the same working set of
  `batchSize * gradient_accumulation_steps` facts. Each rank computes the loss of the facts it owns in that set,
  the gradients of the routed expert rows and the per-fact losses are summed across ranks, and every rank applies
  the identical update, so the bank stays replicated. `max_steps` and `save_steps` count these global steps.

    torchrun --nproc_per_node=2 -m memtune.trainer --spec job.yaml      # gloo on CPU, nccl on GPU

A pod is one *node*. Its controller says how many processes each node runs, and the pod must start them all:
`launch_from_env` reads what the controllers set (torchrun's own `PET_*` variables, which Kubeflow Trainer v2
sets, Kubeflow v1's PyTorchJob sets beside WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT, and memtune sets on a
batch/v1 Job), and `memtune.trainer.tuning.pod` then runs torchrun in-process to start them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from memtune.spec import SpecError

_ENV_NAMES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class RankGroup:
    """This process's place among the ranks; a world of 1 makes every collective a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, fact: int) -> bool:
        return fact % self.world_size == self.rank

    def owned(self, facts: list[int]) -> list[int]:
        """The facts of `facts` this rank computes, in their order."""
        return [i for i in facts if self.owns(i)]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (each rank fills the entries it owns, zeros elsewhere)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Overwrite `tensor` with rank 0's copy."""
        if self.distributed:
            dist.broadcast(tensor, src=0)
        return tensor

    def interleave(self, owned_rows: torch.Tensor, count: int) -> torch.Tensor:
        """All-gather per-fact rows: this rank holds rows of facts rank, rank+N, ...; returns (count, ...) in order."""
        if not self.distributed:
            return owned_rows
        width = -(-count // self.world_size)  # rows of the rank owning the most facts
        padded = owned_rows.new_zeros(width, *owned_rows.shape[1:])  # (W, ...)
        padded[: len(owned_rows)] = owned_rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        result = owned_rows.new_empty(count, *owned_rows.shape[1:])  # (count, ...)
        for rank, part in enumerate(parts):
            result[rank :: self.world_size] = part[: len(range(rank, count, self.world_size))]
        return result

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = RankGroup()


def group_from_env(env: Mapping[str, str] | None = None) -> RankGroup:
    """Read the ranks PyTorchJob/torchrun set; absent variables mean one process (a batch/v1 Job, a laptop)."""
    env = os.environ if env is None else env
    problems, values = [], {}
    for name in _ENV_NAMES:
        raw = env.get(name, "1" if name == "WORLD_SIZE" else "0")
        try:
            values[name] = int(raw)
        except ValueError:
            problems.append((name, f"must be an integer, got {raw!r}"))
    if not problems:
        if values["WORLD_SIZE"] < 1:
            problems.append(("WORLD_SIZE", f"must be at least 1, got {values['WORLD_SIZE']}"))
        elif not 0 <= values["RANK"] < values["WORLD_SIZE"]:
            problems.append(("RANK", f"must be in 0..{values['WORLD_SIZE'] - 1}, got {values['RANK']}"))
        if values["WORLD_SIZE"] > 1:
            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
            problems.extend((name, "must be set when WORLD_SIZE > 1") for name in missing)
    if problems:
        raise SpecError(problems, "PyTorchJob environment")
    return RankGroup(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


@dataclass(frozen=True)
class NodeLaunch:
    """The ranks one pod (node) starts: torchrun's `--nnodes/--nproc-per-node/--node-rank/--master-*` options."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    def torchrun_args(self, module: str, module_args: list[str]) -> list[str]:
        """torchrun's argument list. One node: `--standalone` (a free local port); several: static rendezvous."""
        shape = [f"--nnodes={self.nnodes}", f"--nproc-per-node={self.nproc_per_node}"]
        if self.nnodes == 1:
            where = ["--standalone"]
        else:
            where = [
                f"--node-rank={self.node_rank}",
                f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}",
            ]
        return [*shape, *where, "--max-restarts=0", "-m", module, *module_args]


# torchrun sets this in every process it starts: such a process is one rank, never a launcher.
_UNDER_TORCHRUN = "TORCHELASTIC_RUN_ID"
_DEFAULT_PORT = 29500  # torchrun's


def launch_from_env(env: Mapping[str, str] | None = None) -> NodeLaunch | None:
    """The ranks this pod must start, from its controller's environment; None when this process is itself the
    only rank (a laptop, a one-process pod) or was started by torchrun.

    Read, first found wins: nodes `PET_NNODES`; processes per node `PET_NPROC_PER_NODE`; node rank
    `PET_NODE_RANK`, else `RANK` (Kubeflow v1 sets RANK to the node's rank); master `PET_MASTER_ADDR`/`PORT`, else
    `MASTER_ADDR`/`PORT` (Kubeflow v1 sets only these). Kubeflow v1's WORLD_SIZE must equal nodes × processes.
    Raises SpecError naming every bad variable.
    """
    env = os.environ if env is None else env
    if env.get(_UNDER_TORCHRUN) is not None:
        return None
    problems: list[tuple[str, str]] = []

    def number(names: tuple[str, ...], default: int, least: int) -> int:
        for name in names:
            if (raw := env.get(name)) is None:
                continue
            try:
                value = int(raw)
            except ValueError:
                problems.append((name, f"must be an integer, got {raw!r}"))
                return default
            if value < least:
                problems.append((name, f"must be at least {least}, got {value}"))
            return value
        return default

    nnodes = number(("PET_NNODES",), 1, 1)
    nproc = number(("PET_NPROC_PER_NODE",), 1, 1)
    node_rank = number(("PET_NODE_RANK", "RANK"), 0, 0)
    port = number(("PET_MASTER_PORT", "MASTER_PORT"), _DEFAULT_PORT, 1)
    addr = env.get("PET_MASTER_ADDR") or env.get("MASTER_ADDR") or ""
    if not problems and nnodes * nproc == 1:
        return None
    if not problems:
        if node_rank >= nnodes:
            problems.append(("PET_NODE_RANK", f"must be below PET_NNODES={nnodes}, got {node_rank}"))
        world = env.get("WORLD_SIZE")
        if world is not None and world != str(nnodes * nproc):
            problems.append(("WORLD_SIZE", f"is {world} but PET_NNODES × PET_NPROC_PER_NODE is {nnodes * nproc}"))
        if nnodes > 1 and not addr:
            problems.append(("PET_MASTER_ADDR", "must be set (or MASTER_ADDR) when PET_NNODES > 1"))
    if problems:
        raise SpecError(problems, "trainer pod environment")
    return NodeLaunch(nnodes, nproc, node_rank, addr or "127.0.0.1", port)


def start(group: RankGroup) -> None:
    """Join the process group (env:// rendezvous at MASTER_ADDR:MASTER_PORT): gloo on CPU, nccl on GPU.

    On a GPU node each collective picks its backend by the tensor's device ("cpu:gloo,cuda:nccl"), so CPU-side
    bookkeeping (losses, routes) and device tensors can both be reduced.
    """
    if not group.distributed or dist.is_initialized():
        return
    backend = "gloo"
    if group.local_rank < torch.cuda.device_count():  # PyTorchJob runs nprocPerNode = gpus ranks per node
        torch.cuda.set_device(group.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, rank=group.rank, world_size=group.world_size)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
