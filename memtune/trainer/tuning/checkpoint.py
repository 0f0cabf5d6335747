"""Resumable checkpoints: the bank, the optimizer and the schedule, every `save_steps`, under the job's output.

    {output}/checkpoints/{cache_key}/state-0.safetensors   bank rows, optimizer state, per-question counters
    {output}/checkpoints/{cache_key}/state-1.safetensors   the other slot: saves alternate between the two
    {output}/checkpoints/{cache_key}/checkpoint.json       step, queue, curve, and the sha256 of the slot it uses

The JSON is written last and names the slot by checksum, so a writer killed half way leaves the previous
checkpoint intact: it never points at the slot being rewritten. The cache key covers base model, data, finetune
args and memory config, so only a run with the same inputs resumes. The training state is replicated on every
rank (see distributed.py), so rank 0 saves it alone, every rank loads it, and a restart may use another world size.
Tensors travel as safetensors and the rest as JSON: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from dataclasses import asdict

import torch
from safetensors.torch import load, save

from memtune import storage
from memtune.manifest import IntegrityError
from memtune.spec import FinetuneArgs
from memtune.trainer.tuning.optim import SparseOptimizer, make_optimizer
from memtune.trainer.tuning.train import StepReport, TrainState

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
INDEX_NAME = "checkpoint.json"


def checkpoint_uri(output_uri: str, cache_key: str) -> str:
    return storage.join_uri(output_uri, "checkpoints", cache_key)


def save_checkpoint(
    folder_uri: str, params: dict[str, torch.Tensor], save_steps: int, state: TrainState, optimizer: SparseOptimizer
) -> None:
    """Write the tensors into the slot not named by the current index, then the index (the commit)."""
    tensors = {f"bank.{name}": tensor.contiguous().cpu() for name, tensor in params.items()}
    tensors["optim.steps"] = optimizer.steps.cpu()
    for name, table in optimizer.state.items():
        tensors.update({f"optim.{name}.{key}": tensor.contiguous().cpu() for key, tensor in table.items()})
    tensors.update({"stay": state.stay, "losses": state.losses})
    data = save(tensors)
    slot = f"state-{(state.step // save_steps) % 2}.safetensors"
    storage.write_bytes(storage.join_uri(folder_uri, slot), data)
    index = {
        "format": CHECKPOINT_FORMAT,
        "step": state.step,
        "tensors": slot,
        "sha256": hashlib.sha256(data).hexdigest(),
        "pending": list(state.pending),
        "active": state.active,
        "curve": [asdict(point) for point in state.curve],
    }
    storage.write_bytes(storage.join_uri(folder_uri, INDEX_NAME), json.dumps(index).encode())
    log.info("checkpoint at step %d -> %s", state.step, folder_uri)


def load_checkpoint(
    folder_uri: str, params: dict[str, torch.Tensor], args: FinetuneArgs
) -> tuple[SparseOptimizer, TrainState] | None:
    """Restore the bank into `params` (in place) and return the optimizer and schedule; None when nothing saved.

    A damaged checkpoint is ignored with a warning (training starts from step 0 and overwrites it): like a damaged
    run, it must not fail every later attempt with the same inputs. `params` is untouched unless all of it reads.
    """
    index_uri = storage.join_uri(folder_uri, INDEX_NAME)
    if not storage.exists(index_uri):
        return None
    try:
        bank, optimizer, state = _read_checkpoint(folder_uri, index_uri, params, args)
    except IntegrityError as error:
        log.warning("ignoring a damaged checkpoint, training starts from step 0: %s", error)
        return None
    for name, tensor in params.items():
        tensor.copy_(bank[name])
    log.info("resuming from the checkpoint at step %d in %s", state.step, folder_uri)
    return optimizer, state


_SLOTS = ("state-0.safetensors", "state-1.safetensors")


def _read_checkpoint(
    folder_uri: str, index_uri: str, params: dict[str, torch.Tensor], args: FinetuneArgs
) -> tuple[dict[str, torch.Tensor], SparseOptimizer, TrainState]:
    try:
        index = json.loads(storage.read_bytes(index_uri))
    except (ValueError, RecursionError) as error:
        raise IntegrityError(f"{index_uri}: unreadable checkpoint index ({type(error).__name__})") from None
    if not isinstance(index, dict) or index.get("format") != CHECKPOINT_FORMAT:
        raise IntegrityError(f"{index_uri}: not a checkpoint index of format {CHECKPOINT_FORMAT}")
    if index.get("tensors") not in _SLOTS:
        raise IntegrityError(f"{index_uri}: names no checkpoint slot ({', '.join(_SLOTS)})")
    data = storage.read_bytes(storage.join_uri(folder_uri, index["tensors"]))
    if hashlib.sha256(data).hexdigest() != index.get("sha256"):
        raise IntegrityError(f"{folder_uri}/{index['tensors']}: sha256 differs from {INDEX_NAME}")
    try:
        tensors = load(data)
        bank = {name: tensors[f"bank.{name}"] for name in params}
        for name, tensor in params.items():
            if bank[name].shape != tensor.shape:
                raise ValueError(f"bank {name} is {tuple(bank[name].shape)}, not {tuple(tensor.shape)}")
        device = next(iter(params.values())).device
        optimizer = make_optimizer(args.optim, params, args.learning_rate)
        optimizer.steps = tensors["optim.steps"].to(device)
        for key, tensor in tensors.items():
            if key.startswith("optim.") and key != "optim.steps":
                _, name, slot = key.split(".", 2)
                optimizer.state[name][slot] = tensor.to(device)
        state = TrainState(
            step=int(index["step"]),
            pending=deque(index["pending"]),
            active=list(index["active"]),
            stay=tensors["stay"],
            losses=tensors["losses"],
            curve=[StepReport(**point) for point in index["curve"]],
        )
    except Exception as error:  # a key, type or shape that does not fit: the checkpoint is not this run's
        raise IntegrityError(f"{folder_uri}: damaged checkpoint ({type(error).__name__}: {error})") from None
    return bank, optimizer, state
