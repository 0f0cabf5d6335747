"""Run a whole MemoryTuningJob on this machine: data -> frozen pass -> routing -> sparse training -> artifacts.

    from memtune.spec import load_job_file, resolve_local_paths
    from memtune.trainer.tuning.job import run_job
    summary = run_job(resolve_local_paths(load_job_file("examples/facts-job.yaml"), "examples"))

A finished run whose base model sha256, dataset id, finetune args and memory config all match is reused instead of
retrained (Lamini's use_cached_model); its `cache_key` in memtune.json is what is matched. The same key names the
run's resumable checkpoint (checkpoint.py), so a restarted job with the same inputs continues where it stopped.

With an `s3://` output the run folder is written under `$MEMTUNE_SCRATCH` (else a temp dir) and published to
`{output}/runs/{run_id}` with its manifest last. Under several ranks (distributed.py) every rank trains and only
rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from memtune import storage
from memtune.data import Example, check_lengths, dataset_id, deduplicate, load_examples
from memtune.manifest import MANIFEST_NAME, IntegrityError
from memtune.spec import MemoryTuningJob, SpecError, is_remote
from memtune.trainer.mome.anchors import Anchors, question_anchors
from memtune.trainer.mome.artifacts import META_NAME, committed_runs, read_run, runs_dir, save_run
from memtune.trainer.mome.bank import TensorBank
from memtune.trainer.mome.base import LoadedModel, decoder_layers, load_base_model
from memtune.trainer.mome.experts import init_experts
from memtune.trainer.mome.index import build_index, plan_index
from memtune.trainer.mome.keys import answer_tokens, question_keys, tokenize_prompt
from memtune.trainer.mome.memory import Memory, MemoryLayout
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.assign import assign_experts
from memtune.trainer.tuning.calibrate import FAR_PROBES, calibrate, near_probes
from memtune.trainer.tuning.checkpoint import checkpoint_uri, load_checkpoint, save_checkpoint
from memtune.trainer.tuning.distributed import SINGLE, RankGroup
from memtune.trainer.tuning.encode import Encoded, encode_examples
from memtune.trainer.tuning.train import StepReport, TrainSetup, train_experts

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: str
    """The run folder, or its `s3://` URI; empty on ranks other than 0, which write nothing."""
    reused: bool
    steps: int
    final_loss: float
    recall: float
    """Share of training questions whose greedy answer is exactly the trained one."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Bump when the same inputs would train a different memory (2: one answer per question, anchor words; 3: a question
# is learned only when every answer token is the argmax; 4: the anchored gate).
TRAINING_REVISION = 4


def cache_key(base_sha256: str, data_id: str, job: MemoryTuningJob) -> str:
    """Identity of a training result: base weights, data, Lamini's args, memtune's memory knobs and revision."""
    document = {
        "revision": TRAINING_REVISION,
        "base": base_sha256,
        "dataset": data_id,
        "finetuneArgs": job.spec.finetuneArgs.model_dump(mode="json"),
        "memory": job.spec.memory.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def plan_layout(job: MemoryTuningJob, num_layers: int) -> MemoryLayout:
    """Resolve the memory's layers from the spec, naming the field of any impossible choice."""
    memory, args = job.spec.memory, job.spec.finetuneArgs
    experts = sorted(set(memory.expertLayers or range(max(0, num_layers - memory.numExpertLayers), num_layers)))
    key_layer = memory.keyLayer if memory.keyLayer is not None else round(0.4 * num_layers)
    problems = []
    if experts[-1] >= num_layers:
        problems.append(("spec.memory.expertLayers", f"the base model has layers 0..{num_layers - 1}, got {experts}"))
    if key_layer >= experts[0]:
        problems.append(
            ("spec.memory.keyLayer", f"must be below the first expert layer ({experts[0]}) so experts never move keys")
        )
    if problems:
        raise SpecError(problems, job.metadata.name)
    threshold = memory.distanceThreshold if memory.gate == "calibrated" else None
    return MemoryLayout(key_layer, experts, args.r_value, args.index_k, threshold, memory.temperature)


def find_reusable(output: str, key: str) -> Path | None:
    """The newest committed run of `output` with this cache key."""
    for folder in reversed(committed_runs(output)):
        try:
            meta = json.loads((folder / "memtune.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("cache_key") == key:
            return folder
    return None


def _remote_meta(run: str) -> dict[str, Any]:
    """memtune.json of a committed s3 run, checked against its manifest without downloading the run."""
    manifest = json.loads(storage.read_bytes(storage.join_uri(run, MANIFEST_NAME)))
    data = storage.read_bytes(storage.join_uri(run, META_NAME))
    expected = manifest.get("files", {}).get(META_NAME, {}).get("sha256")
    if hashlib.sha256(data).hexdigest() != expected:
        raise IntegrityError(f"{run}/{META_NAME}: sha256 differs from its manifest")
    return json.loads(data)


def reusable_run(output: str, key: str) -> tuple[str, dict[str, Any]] | None:
    """(location, metadata) of a committed run of `output` with this cache key; on s3 only the newest is read."""
    if is_remote(output):
        latest = storage.latest_committed_run(output)
        if latest is not None and (meta := _remote_meta(latest)).get("cache_key") == key:
            return latest, meta
        return None
    previous = find_reusable(output, key)
    # read_run verifies every checksum: a damaged run is an error, not a cache hit
    return (str(previous), read_run(previous).meta) if previous is not None else None


def _scratch_runs() -> Path:
    """Where a run destined for object storage is assembled (the contract's writable `$MEMTUNE_SCRATCH`)."""
    root = os.environ.get("MEMTUNE_SCRATCH") or tempfile.mkdtemp(prefix="memtune-")
    return Path(root) / "runs"


def _calibrated_threshold(
    base: LoadedModel, questions: list[str], keys: torch.Tensor, key_layer: int, seed: int
) -> dict[str, float]:
    probes, owners = near_probes(questions, seed=seed)
    result = calibrate(
        keys, question_keys(base, probes, key_layer), owners, question_keys(base, list(FAR_PROBES), key_layer)
    )
    log.info("gate calibrated: %s", result.to_dict())
    return result.to_dict()


def build_memory(
    base: LoadedModel, examples: list[Example], job: MemoryTuningJob, layout: MemoryLayout, group: RankGroup = SINGLE
) -> tuple[Memory, list[Encoded | None], dict]:
    """Frozen pass, expert assignment, index and gate; returns the untrained memory, encoded examples, gate info.

    Each rank encodes only the examples it owns (None elsewhere in the list); the keys are all-gathered.
    """
    owned = group.owned(list(range(len(examples))))
    mine = encode_examples(
        base,
        [(examples[i].input, examples[i].output) for i in owned],
        layout.key_layer,
        layout.expert_layers[0],
        job.spec.memory.batchSize,
    )
    encoded: list[Encoded | None] = [None] * len(examples)
    for i, example in zip(owned, mine, strict=True):
        encoded[i] = example
    own_keys = torch.stack([e.key for e in mine]) if mine else torch.empty(0, base.model.config.hidden_size)
    keys = group.interleave(own_keys, len(examples))  # (N, d)
    args = job.spec.finetuneArgs
    slot_expert = assign_experts(keys, args.index_max_size, job.spec.memory.seed)
    generator = torch.Generator().manual_seed(job.spec.memory.seed)
    hidden = keys.shape[1]
    params = init_experts(int(slot_expert.max()) + 1, len(layout.expert_layers), hidden, layout.rank, generator)
    plan = plan_index(args.index_method, len(keys), hidden, args)
    index = build_index(keys.numpy(), plan)
    gate: dict[str, Any] = {"mode": job.spec.memory.gate}
    # Only rank 0 writes the gate into the run; training routes are never gated.
    if job.spec.memory.gate == "calibrated" and layout.threshold is None and group.is_rank0:
        gate.update(
            _calibrated_threshold(base, [e.input for e in examples], keys, layout.key_layer, job.spec.memory.seed)
        )
        layout.threshold = gate["threshold"]
    anchors = None
    if layout.threshold is not None and job.spec.memory.anchorShare > 0 and group.is_rank0:
        anchors = Anchors(question_anchors(base, [e.input for e in examples]), job.spec.memory.anchorShare)
        gate["questions_with_anchors"] = sum(1 for slot in anchors.slots if slot)
        if "far_min" in gate:  # calibrated: a prompt holding a question's anchors may sit as far as any everyday one
            layout.anchored_threshold = gate["anchored_threshold"] = max(gate["threshold"], gate["far_min"])
    return Memory(layout, TensorBank(params), keys, slot_expert, index, plan, anchors), encoded, gate


def _one_answer_per_question(examples: list[Example]) -> list[Example]:
    """A memory holds one answer per question: merge repeated lines, let a later answer supersede an earlier one."""
    unique = deduplicate(examples)
    if unique.repeated:
        log.info("%d lines repeat an earlier question and answer exactly; merged", unique.repeated)
    if unique.conflicts:
        shown = "; ".join(f"{question!r} (lines {', '.join(map(str, at))})" for question, at in unique.conflicts[:5])
        more = f"; and {len(unique.conflicts) - 5} more" if len(unique.conflicts) > 5 else ""
        log.warning(
            "%d questions are given different answers on different lines; each keeps its last line's answer: %s%s",
            len(unique.conflicts),
            shown,
            more,
        )
    return unique.examples


def _report_progress(show: bool, on_step: Callable[[StepReport], None] | None) -> Callable[[StepReport], None]:
    def report(step: StepReport) -> None:
        if on_step is not None:
            on_step(step)
        if show:
            print(
                f"\rstep {step.step}/{step.max_steps}  loss {step.loss:.4f}  learned {step.learned}  "
                f"{step.seconds:.0f}s",
                end="",
                flush=True,
            )

    return report


def run_job(
    job: MemoryTuningJob,
    *,
    use_cached_model: bool = True,
    show_progress: bool = True,
    on_step: Callable[[StepReport], None] | None = None,
    group: RankGroup = SINGLE,
) -> RunSummary:
    """Train (or reuse) the job's memory and commit a run folder under `spec.output.uri`; resume a checkpoint."""
    started = time.perf_counter()
    spec, args = job.spec, job.spec.finetuneArgs
    examples = load_examples(spec.dataset, args.max_finetuning_examples)
    base = load_base_model(spec.baseModel)
    tokenizer = base.tokenizer
    check_lengths(
        examples,
        lambda e: len(tokenize_prompt(tokenizer, e.input).ids) + len(answer_tokens(tokenizer, e.output)),
        args.max_length,
    )
    data_id = dataset_id(examples)
    key = cache_key(base.sha256, data_id, job)
    if use_cached_model and (previous := reusable_run(spec.output.uri, key)) is not None:
        location, meta = previous
        log.info("reusing %s (same base model, dataset, finetune args and memory config)", location)
        metrics = meta["metrics"]
        return RunSummary(
            location,
            True,
            metrics["steps"],
            metrics["final_loss"],
            metrics["recall"],
            time.perf_counter() - started,
        )

    lines = len(examples)
    examples = _one_answer_per_question(examples)
    layout = plan_layout(job, len(decoder_layers(base.model)))
    memory, encoded, gate = build_memory(base, examples, job, layout, group)
    model = MemoryModel(base, memory)  # the hooks and the router generation will use
    routes = model.training_route([e.input for e in examples])
    # (N, k) each: rank 0's index decides, so no rank can route differently
    group.broadcast_(routes.experts)
    group.broadcast_(routes.weights)
    checkpoints = checkpoint_uri(spec.output.uri, key)
    resumed = load_checkpoint(checkpoints, memory.params, args)
    optimizer, state = resumed if resumed is not None else (None, None)
    try:
        setup = TrainSetup(base.model, model.hooks, layout.expert_layers[0], encoded, routes, memory.params)
        result = train_experts(
            setup,
            args,
            spec.memory.batchSize,
            spec.memory.stopLoss,
            _report_progress(show_progress, on_step),
            partial(save_checkpoint, checkpoints, memory.params, args.save_steps) if group.is_rank0 else None,
            group=group,
            optimizer=optimizer,
            state=state,
        )
    finally:
        model.close()
    if show_progress:
        print()
    recall = float(result.exact.float().mean())
    if not group.is_rank0:
        return RunSummary("", False, result.steps, result.final_loss, recall, time.perf_counter() - started)
    run_id = storage.new_run_id()
    remote = is_remote(spec.output.uri)
    folder = (_scratch_runs() if remote else runs_dir(spec.output.uri)) / run_id
    metrics = {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "recall": recall,
        "examples": lines,
        "questions": len(examples),
    }
    meta = {
        "base_model": {"id": spec.baseModel, "sha256": base.sha256},
        "dataset_id": data_id,
        "cache_key": key,
        "gate": gate,
        "metrics": metrics,
        "finetune_args": args.model_dump(mode="json"),
        # generation's default budget covers it (model.py): a trained answer is never cut by default
        "longest_answer_tokens": max(len(answer_tokens(tokenizer, e.output)) for e in examples),
    }
    curve = [{"step": p.step, "loss": p.loss, "learned": p.learned, "seconds": p.seconds} for p in result.curve]
    save_run(folder, memory, meta, job.model_dump(mode="json", exclude_none=True), curve)
    location = str(folder)
    if remote:
        location = storage.run_uri(spec.output.uri, run_id)
        storage.publish_folder(folder, location)
        shutil.rmtree(folder)  # the scratch copy: the bucket holds the run now
    try:  # the committed run supersedes the checkpoints
        storage.remove_tree(checkpoints)
    except storage.StorageError as error:  # the run is committed: a leftover checkpoint only costs space
        log.warning("could not delete the checkpoints at %s: %s", checkpoints, error)
    return RunSummary(location, False, result.steps, result.final_loss, recall, time.perf_counter() - started)
