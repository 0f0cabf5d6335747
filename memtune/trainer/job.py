"""Run a whole MemoryTuningJob on this machine: data -> frozen pass -> routing -> sparse training -> artifacts.

    from memtune.spec import load_job_file, resolve_local_paths
    from memtune.trainer.job import run_job
    summary = run_job(resolve_local_paths(load_job_file("examples/facts-job.yaml"), "examples"))

A finished run whose base model sha256, dataset id, finetune args and memory config all match is reused instead of
retrained (Lamini's use_cached_model); its `cache_key` in memtune.json is what is matched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from memtune.data import Example, check_lengths, dataset_id, load_examples
from memtune.spec import MemoryTuningJob, SpecError
from memtune.trainer.artifacts import committed_runs, read_run, runs_dir, save_run
from memtune.trainer.bank import assign_experts
from memtune.trainer.calibrate import FAR_PROBES, calibrate, near_probes
from memtune.trainer.encode import answer_tokens, encode_examples, question_keys, tokenize_prompt
from memtune.trainer.experts import ExpertHooks, init_experts
from memtune.trainer.index import build_index, plan_index
from memtune.trainer.memory import Memory, MemoryLayout
from memtune.trainer.models import LoadedModel, decoder_layers, load_base_model
from memtune.trainer.train import StepReport, TrainSetup, train_experts

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: str
    reused: bool
    steps: int
    final_loss: float
    recall: float
    """Share of training questions whose greedy answer is exactly the trained one."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(base_sha256: str, data_id: str, job: MemoryTuningJob) -> str:
    """Identity of a training result: base weights, data, Lamini's args and memtune's memory knobs."""
    document = {
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


def _calibrated_threshold(base: LoadedModel, questions: list[str], keys: torch.Tensor, key_layer: int) -> dict:
    probes, owners = near_probes(questions)
    result = calibrate(
        keys, question_keys(base, probes, key_layer), owners, question_keys(base, list(FAR_PROBES), key_layer)
    )
    log.info("gate calibrated: %s", result.to_dict())
    return result.to_dict()


def build_memory(
    base: LoadedModel, examples: list[Example], job: MemoryTuningJob, layout: MemoryLayout
) -> tuple[Memory, list, dict]:
    """Frozen pass, expert assignment, index and gate; returns the untrained memory, encoded examples, gate info."""
    encoded = encode_examples(
        base,
        [(e.input, e.output) for e in examples],
        layout.key_layer,
        layout.expert_layers[0],
        job.spec.memory.batchSize,
    )
    keys = torch.stack([e.key for e in encoded])  # (N, d)
    args = job.spec.finetuneArgs
    slot_expert = assign_experts(keys, args.index_max_size, job.spec.memory.seed)
    generator = torch.Generator().manual_seed(job.spec.memory.seed)
    hidden = keys.shape[1]
    params = init_experts(int(slot_expert.max()) + 1, len(layout.expert_layers), hidden, layout.rank, generator)
    plan = plan_index(args.index_method, len(keys), hidden, args)
    index = build_index(keys.numpy(), plan)
    gate: dict[str, Any] = {"mode": job.spec.memory.gate}
    if job.spec.memory.gate == "calibrated" and layout.threshold is None:
        gate.update(_calibrated_threshold(base, [e.input for e in examples], keys, layout.key_layer))
        layout.threshold = gate["threshold"]
    return Memory(layout, params, keys, slot_expert, index, plan), encoded, gate


def _save_checkpoint(path: Path, memory: Memory, step: int) -> None:
    """Every save_steps: the bank so far (atomic replace), for inspecting or salvaging a long run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    save_file(memory.params, temporary, metadata={"step": str(step)})
    temporary.replace(path)


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
) -> RunSummary:
    """Train (or reuse) the job's memory and commit a run folder under `spec.output.uri`."""
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
    if use_cached_model and (previous := find_reusable(spec.output.uri, key)) is not None:
        meta = read_run(previous).meta  # verifies every checksum: a damaged run is an error, not a cache hit
        log.info("reusing %s (same base model, dataset, finetune args and memory config)", previous)
        metrics = meta["metrics"]
        return RunSummary(
            str(previous),
            True,
            metrics["steps"],
            metrics["final_loss"],
            metrics["recall"],
            time.perf_counter() - started,
        )

    run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{key[:8]}"
    layout = plan_layout(job, len(decoder_layers(base.model)))
    memory, encoded, gate = build_memory(base, examples, job, layout)
    routes = memory.router()(memory.keys).route  # each question routes as generation will route it (never gated)
    hooks = ExpertHooks(base.model, layout.expert_layers)
    try:
        setup = TrainSetup(base.model, hooks, layout.expert_layers[0], encoded, routes, memory.params)
        checkpoint = runs_dir(spec.output.uri).parent / "checkpoints" / f"{run_id}.safetensors"
        result = train_experts(
            setup,
            args,
            spec.memory.batchSize,
            spec.memory.stopLoss,
            _report_progress(show_progress, on_step),
            lambda step: _save_checkpoint(checkpoint, memory, step),
        )
    finally:
        hooks.remove()
    if show_progress:
        print()
    recall = float(result.exact.float().mean())
    folder = runs_dir(spec.output.uri) / run_id
    metrics = {"steps": result.steps, "final_loss": result.final_loss, "recall": recall, "examples": len(examples)}
    meta = {
        "base_model": {"id": spec.baseModel, "sha256": base.sha256},
        "dataset_id": data_id,
        "cache_key": key,
        "gate": gate,
        "metrics": metrics,
        "finetune_args": args.model_dump(mode="json"),
    }
    curve = [{"step": p.step, "loss": p.loss, "learned": p.learned, "seconds": p.seconds} for p in result.curve]
    save_run(folder, memory, meta, job.model_dump(mode="json", exclude_none=True), curve)
    checkpoint.unlink(missing_ok=True)  # the committed run supersedes it
    return RunSummary(str(folder), False, result.steps, result.final_loss, recall, time.perf_counter() - started)
