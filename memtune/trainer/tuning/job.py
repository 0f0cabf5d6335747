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
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from memtune import storage
from memtune.contract import ENV_SCRATCH
from memtune.data import Example, check_lengths, dataset_id, deduplicate, load_examples
from memtune.manifest import IntegrityError
from memtune.spec import MemoryTuningJob, SpecError, is_remote
from memtune.trainer.mome.anchors import Anchors, evidence
from memtune.trainer.mome.architecture import architecture
from memtune.trainer.mome.artifacts import CALIBRATION_NAME, FACTS_NAME, META_NAME, runs_dir, save_run
from memtune.trainer.mome.bank import TensorBank
from memtune.trainer.mome.base import LoadedModel, decoder_layers, load_base_model
from memtune.trainer.mome.devices import DTYPES, resolve_device, resolve_dtype
from memtune.trainer.mome.experts import init_experts
from memtune.trainer.mome.index import build_index, plan_index
from memtune.trainer.mome.keys import answer_tokens, question_keys, tokenize_prompt
from memtune.trainer.mome.memory import Memory, MemoryLayout
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.assign import assign_experts
from memtune.trainer.tuning.calibrate import near_probes, neighbour_probes
from memtune.trainer.tuning.checkpoint import checkpoint_uri, load_checkpoint, save_checkpoint
from memtune.trainer.tuning.distributed import SINGLE, RankGroup
from memtune.trainer.tuning.encode import encode_examples
from memtune.trainer.tuning.incremental import (
    Fact,
    FrozenRows,
    build_child,
    check_compatible,
    diff_facts,
    facts_bytes,
    load_parent,
    open_parent,
)
from memtune.trainer.tuning.optim import make_optimizer
from memtune.trainer.tuning.recalibrate import ProbeKeys, measure
from memtune.trainer.tuning.schedule import plan_schedule
from memtune.trainer.tuning.store import EncodedStore
from memtune.trainer.tuning.train import StepReport, TrainResult, TrainSetup, train_experts

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
    footprint: dict[str, Any] | None = None
    """What the memory costs per trained fact: its files on disk (artifacts.py) and the peaks while training
    (`_peaks`); None for a reused run of an older memtune."""
    unlearned: list[str] = field(default_factory=list)
    """Questions whose greedy answer is not the trained one (at most UNLEARNED_KEPT of them; `unlearned_count`)."""
    unlearned_count: int = 0
    max_steps: int = 0
    schedule: dict[str, Any] = field(default_factory=dict)
    """How `learning_rate` was applied (schedule.py): expert_lr, updates_per_fact, facts_per_step, micro_batches."""
    parent: dict[str, Any] | None = None
    """A grown memory's parent run {uri, run_id, manifest_sha256, cache_key} (incremental.py); None without one."""
    diff: dict[str, int] | None = None
    """A grown memory's questions against its parent's: added, updated, forgotten, unchanged, kept_by_append,
    retrained (unchanged questions trained again because they share or route through a trained expert),
    forgotten_gated (forgotten questions the gate closes on)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unlearned_message(self) -> str:
        """What went unlearned and what to change; empty when every fact was learned."""
        return unlearned_message(self.unlearned, self.unlearned_count, self.recall, self.steps, self.max_steps)


UNLEARNED_KEPT = 20
"""How many unlearned questions a run keeps in memtune.json and its summary (the count is always exact)."""


def unlearned_message(questions: list[str], count: int, recall: float, steps: int, max_steps: int) -> str:
    if not count:
        return ""
    shown = "; ".join(repr(question) for question in questions[:3])
    more = f"; and {count - 3} more" if count > 3 else ""
    if steps >= max_steps:
        advice = (
            f"the run used all {max_steps} steps: raise max_steps (to about {2 * max_steps}) or learning_rate "
            "(recall rises with both)"
        )
    else:
        advice = "training stopped early with these below stopLoss yet not exact: lower memory.stopLoss"
    return f"{count} facts NOT learned (recall {recall:.1%}): {shown}{more}. {advice}"


# Bump when the same inputs would train a different memory (2: one answer per question, anchor words; 3: a question
# is learned only when every answer token is the argmax; 4: the anchored gate; 5: anchors over units of any script, hard
# units, foreign anchors; 6: learning_rate on Lamini's scale, mapped by schedule.py, and a working set sized to
# max_steps).
TRAINING_REVISION = 6


def cache_key(base_sha256: str, data_id: str, job: MemoryTuningJob, parent: str | None = None) -> str:
    """Identity of a training result: base weights, data, Lamini's args, memtune's memory knobs and revision.

    parent: the sha256 of the parent run's manifest, for a grown memory. It stands in the key for `memory.parent`,
    which may name a job output whose newest run changes; a job without a parent keys as before parents existed."""
    memory = job.spec.memory.model_dump(mode="json", exclude={"parent", "mode"})
    if parent is not None:
        memory |= {"parent": parent, "mode": job.spec.memory.mode}
    document = {
        "revision": TRAINING_REVISION,
        "base": base_sha256,
        "dataset": data_id,
        "finetuneArgs": job.spec.finetuneArgs.model_dump(mode="json"),
        "memory": memory,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# Default expert layers: the last 8, at most half the depth (a 30-layer model: 22..29; a 10-layer one: 5..9).
DEFAULT_EXPERT_LAYERS = 8


def plan_layout(job: MemoryTuningJob, num_layers: int) -> MemoryLayout:
    """Resolve the memory's layers from the spec and the depth, naming the field of any impossible choice.

    Defaults: expert layers the last `min(8, num_layers // 2)`; key layer 40% of the depth, or the layer just below
    the first expert layer when that is lower. Any depth >= 2 has a valid default.
    """
    memory, args = job.spec.memory, job.spec.finetuneArgs
    problems = []
    if memory.expertLayers:
        experts = sorted(set(memory.expertLayers))
        field = "spec.memory.expertLayers"
    else:
        count = memory.numExpertLayers or max(1, min(DEFAULT_EXPERT_LAYERS, num_layers // 2))
        experts = list(range(max(0, num_layers - count), num_layers))
        field = "spec.memory.numExpertLayers"
    if experts[-1] >= num_layers:
        problems.append((field, f"the base model has layers 0..{num_layers - 1}, got {experts}"))
    elif experts[0] == 0 and memory.keyLayer is None:
        problems.append((field, f"layer 0 carries experts, which leaves no layer below for the key ({experts})"))
    key_layer = memory.keyLayer if memory.keyLayer is not None else min(round(0.4 * num_layers), experts[0] - 1)
    if memory.keyLayer is not None and key_layer >= experts[0]:
        problems.append(
            ("spec.memory.keyLayer", f"must be below the first expert layer ({experts[0]}) so experts never move keys")
        )
    if problems:
        raise SpecError(problems, job.metadata.name)
    threshold = memory.distanceThreshold if memory.gate == "calibrated" else None
    return MemoryLayout(key_layer, experts, args.r_value, args.index_k, threshold, memory.temperature)


def reusable_run(output: str, key: str) -> tuple[str, dict[str, Any]] | None:
    """(location, metadata) of the newest intact committed run of `output` with this cache key, or None.

    The same on disk and on S3: every committed run is considered, newest first; a damaged one (a file that no
    longer matches its manifest) is skipped with a warning, never served and never in the way of a new run.
    """
    for run in storage.committed_runs(output):
        try:
            meta = json.loads(storage.read_committed_file(run, META_NAME))
            if not isinstance(meta, dict) or meta.get("cache_key") != key:
                continue
            storage.verify_committed(run)
        except (IntegrityError, ValueError) as error:
            log.warning("skipping damaged run %s: %s", run, error)
            continue
        except storage.StorageError as error:
            if error.transient:
                raise
            log.warning("skipping unreadable run %s: %s", run, error)
            continue
        return run.removeprefix("file://") if not is_remote(output) else run, meta
    return None


def _scratch_runs() -> Path:
    """Where a run destined for object storage is assembled (the contract's writable `$MEMTUNE_SCRATCH`)."""
    root = os.environ.get(ENV_SCRATCH) or tempfile.mkdtemp(prefix="memtune-")
    return Path(root) / "runs"


def _calibrated_threshold(
    base: LoadedModel, questions: list[str], keys: torch.Tensor, key_layer: int, seed: int
) -> tuple[dict[str, float], ProbeKeys]:
    """The calibration and the probe keys it measured (kept in the run, so that a child run extends them)."""
    probes = measure(base, questions, key_layer, seed)
    result = probes.calibrate(keys)
    log.info("gate calibrated: %s", result.to_dict())
    return result.to_dict(), probes


def build_memory(
    base: LoadedModel,
    examples: list[Example],
    job: MemoryTuningJob,
    layout: MemoryLayout,
    encoded: EncodedStore,
    group: RankGroup = SINGLE,
) -> tuple[Memory, dict, ProbeKeys | None]:
    """Frozen pass into `encoded`, expert assignment, index and gate; returns the untrained memory, gate info and
    the calibration's probe keys (None when not calibrated, or on ranks other than 0).

    Each rank encodes only the examples it owns (the store has None for the others); the keys are all-gathered.
    Encoded examples go to a scratch file (store.py): resident memory does not grow with the facts.
    """
    owned = group.owned(list(range(len(examples))))
    mine = encode_examples(
        base,
        [(examples[i].input, examples[i].output) for i in owned],
        layout.key_layer,
        layout.expert_layers[0],
        job.spec.memory.batchSize,
    )
    prompts = [tokenize_prompt(base.tokenizer, e.input) for e in examples]
    width = max(len(p.ids) for p in prompts)
    key_rows, nats_rows = [], []
    for i, example in zip(owned, mine, strict=True):
        key_rows.append(example.key)
        nats_rows.append(torch.nn.functional.pad(example.token_nats, (0, width - len(example.token_nats))))
        encoded.add(i, example)
    own_keys = torch.stack(key_rows) if key_rows else torch.empty(0, architecture(base.model).hidden_size)
    keys = group.interleave(own_keys, len(examples))  # (N, d)
    # the gate's evidence needs every question's surprisal: the frozen pass computed it, each rank for its own
    nats = group.interleave(torch.stack(nats_rows) if nats_rows else torch.empty(0, width), len(examples))  # (N, P)
    args = job.spec.finetuneArgs
    slot_expert = assign_experts(keys, args.index_max_size, job.spec.memory.seed)
    generator = torch.Generator().manual_seed(job.spec.memory.seed)
    hidden = keys.shape[1]
    params = init_experts(int(slot_expert.max()) + 1, len(layout.expert_layers), hidden, layout.rank, generator)
    params = {name: tensor.to(base.device) for name, tensor in params.items()}  # float32 masters, with the model
    plan = plan_index(args.index_method, len(keys), hidden, args)
    index = build_index(keys.numpy(), plan)
    gate: dict[str, Any] = {"mode": job.spec.memory.gate}
    probes = None
    # Only rank 0 writes the gate into the run; training routes are never gated.
    if job.spec.memory.gate == "calibrated" and layout.threshold is None and group.is_rank0:
        calibration, probes = _calibrated_threshold(
            base, [e.input for e in examples], keys, layout.key_layer, job.spec.memory.seed
        )
        gate.update(calibration)
        layout.threshold = gate["threshold"]
    anchors = None
    if layout.threshold is not None and job.spec.memory.anchorShare > 0 and group.is_rank0:
        pairs = zip(examples, prompts, strict=True)
        seen = [evidence(e.input, tokens, nats[i, : len(tokens.ids)].tolist()) for i, (e, tokens) in enumerate(pairs)]
        anchors = Anchors(seen, job.spec.memory.anchorShare)
        gate["questions_with_anchors"] = sum(1 for slot in anchors.slots if slot.anchors)
        if "far_min" in gate:  # calibrated: a prompt holding a question's anchors may sit as far as any everyday one
            layout.anchored_threshold = gate["anchored_threshold"] = max(gate["threshold"], gate["far_min"])
    memory = Memory(layout, TensorBank(params), keys, slot_expert, index, plan, anchors)
    if anchors is not None:
        gate["probes"] = _gate_report(base, memory, [e.input for e in examples], job.spec.memory.seed)
        log.info("gate at calibration: %s", gate["probes"])
    return memory, gate, probes


def _gate_report(base: LoadedModel, memory: Memory, questions: list[str], seed: int) -> dict[str, Any]:
    """What the finished gate does with probes made from the training questions: rewordings admitted to their own
    question, and untrained neighbours (another number, another name, another relation) kept from every answer."""
    near, owners = near_probes(questions, seed=seed)
    assert memory.anchors is not None
    neighbours = neighbour_probes(questions, memory.anchors.slots, seed=seed)
    return probe_report(base, memory, near, owners, neighbours)


def probe_report(
    base: LoadedModel, memory: Memory, near: list[str], owners: list[int], neighbours: list[tuple[str, str]]
) -> dict[str, Any]:
    """Route the probes through the finished memory: rewordings `near` (of trained questions `owners`) admitted to
    their own expert, and `neighbours` (text, kind: number / entity / relation) gated, counted per kind."""
    texts = near + [text for text, _ in neighbours]
    routing = memory.router()(question_keys(base, texts, memory.layout.key_layer), texts)
    chosen = routing.route.experts[:, 0]
    admitted = [not routing.gated[i] and chosen[i] == memory.slot_expert[owner] for i, owner in enumerate(owners)]
    report: dict[str, Any] = {"rewordings": len(near), "rewordings_admitted": int(sum(admitted))}
    for kind in ("number", "entity", "relation"):
        rows = [len(near) + i for i, (_, k) in enumerate(neighbours) if k == kind]
        report[f"{kind}_neighbours"] = len(rows)
        report[f"{kind}_neighbours_blocked"] = int(routing.gated[rows].sum()) if rows else 0
    return report


def _peaks(device: torch.device, facts: int, scratch_bytes: int) -> dict[str, Any]:
    """Peak memory of this process so far (resident set; the device's allocator on CUDA) and the frozen pass's
    scratch file, in bytes and per trained fact."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    peaks: dict[str, Any] = {"peak_rss_bytes": rss, "peak_rss_bytes_per_fact": round(rss / max(facts, 1))}
    if device.type == "cuda":
        vram = torch.cuda.max_memory_allocated(device)
        peaks |= {"peak_device_bytes": vram, "peak_device_bytes_per_fact": round(vram / max(facts, 1))}
    peaks["scratch_bytes_per_fact"] = round(scratch_bytes / max(facts, 1))
    return peaks


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
    device: str | None = None,
    dtype: str | None = None,
    base: LoadedModel | None = None,
) -> RunSummary:
    """Train (or reuse) the job's memory and commit a run folder under `spec.output.uri`; resume a checkpoint.

    device / dtype (devices.py): where the base model runs and in which precision; auto is CUDA in bfloat16 when
    torch sees a GPU (under several ranks, the rank's own GPU), else the CPU in float32, said in a log line. The
    experts and their optimizer state are float32 on the same device; the run stores them in memory.expertDtype.

    With `memory.parent` the run grows from that run (incremental.py): only new and changed questions are trained.
    base: the job's base model already loaded on its device (a process running many jobs loads it once)."""
    started = time.perf_counter()
    spec, args = job.spec, job.spec.finetuneArgs
    examples = load_examples(spec.dataset, args.max_finetuning_examples)
    # the parent is found and its checksums verified before the base model loads: a bad one costs nothing
    parent_ref = open_parent(spec.memory.parent) if spec.memory.parent is not None else None
    run_device = resolve_device(device) if base is None else base.device
    run_dtype = resolve_dtype(dtype, run_device) if base is None else next(base.model.parameters()).dtype
    if base is None:
        base = load_base_model(spec.baseModel, dtype=run_dtype)
        base.model.to(run_device)
    tokenizer = base.tokenizer
    check_lengths(
        examples,
        lambda e: len(tokenize_prompt(tokenizer, e.input).ids) + len(answer_tokens(tokenizer, e.output)),
        args.max_length,
    )
    data_id = dataset_id(examples)
    key = cache_key(base.sha256, data_id, job, parent_ref.identity if parent_ref is not None else None)
    if use_cached_model and (previous := reusable_run(spec.output.uri, key)) is not None:
        location, meta = previous
        log.info("reusing %s (same base model, dataset, finetune args, memory config and parent)", location)
        metrics = meta["metrics"]
        reused = RunSummary(
            location,
            True,
            metrics["steps"],
            metrics["final_loss"],
            metrics["recall"],
            time.perf_counter() - started,
            meta.get("footprint"),
            metrics.get("unlearned", []),
            metrics.get("unlearned_count", 0),
            args.max_steps,
            meta.get("schedule", {}),
            meta.get("parent"),
            meta.get("diff"),
        )
        if reused.unlearned_count:
            log.warning("%s", reused.unlearned_message())
        return reused

    # Every check that can fail runs before training: the layout, the parent, and that the run can be written.
    layout = plan_layout(job, len(decoder_layers(base.model)))
    parent = diff = None
    if parent_ref is not None:
        parent = load_parent(parent_ref, base.sha256)
        check_compatible(parent, job, layout)
    remote = is_remote(spec.output.uri)
    storage.check_writable(spec.output.uri)
    scratch = _scratch_runs() if remote else None
    if scratch is not None:
        storage.check_writable(str(scratch))
    lines = len(examples)
    examples = _one_answer_per_question(examples)
    if parent is not None:
        diff = diff_facts(parent.facts, examples, spec.memory.mode)
        log.info("against the parent %s: %s", parent.ref.run_id, diff.summary())
    trains = len(examples) if diff is None else max(1, len(diff.updated) + len(diff.added))
    schedule = plan_schedule(args, spec.memory.batchSize, trains)
    log.info("schedule for learning_rate %g (Lamini's scale): %s", args.learning_rate, schedule.to_dict())
    trainer_args = schedule.trainer_args(args)
    encoded = EncodedStore(len(examples), os.environ.get(ENV_SCRATCH))
    model = child = None
    try:
        if parent is None or diff is None:
            memory, gate, probes = build_memory(base, examples, job, layout, encoded, group)
            facts = [Fact(e.input, e.output, False) for e in examples]
            trained = list(range(len(examples)))
        else:
            child = build_child(base, parent, diff, job, layout, encoded, group)
            memory, gate, probes, facts, trained = child.memory, child.gate, child.probes, child.facts, child.trained
            encoded.count = len(trained)  # the store holds the trained questions only, in `trained` order
        model = MemoryModel(base, memory)  # the hooks and the router generation will use
        questions = [facts[slot].input for slot in trained]
        # (M, k) each, as generation routes the trained questions: rank 0's index decides, so no rank differs
        routes = model.router(memory.keys[trained], questions).route if trained else None
        if routes is not None:
            group.broadcast_(routes.experts)
            group.broadcast_(routes.weights)
        checkpoints = checkpoint_uri(spec.output.uri, key)
        resumed = load_checkpoint(checkpoints, memory.params, trainer_args)
        optimizer, state = resumed if resumed is not None else (None, None)
        if child is not None:  # the parent's untouched experts stay byte for byte
            optimizer = FrozenRows(
                optimizer or make_optimizer(trainer_args.optim, memory.params, trainer_args.learning_rate),
                child.plan.trainable,
            )
        result = TrainResult(0, 0.0, torch.zeros(0), torch.zeros(0, dtype=torch.bool))
        if routes is not None:
            setup = TrainSetup(base.model, model.hooks, layout.expert_layers[0], encoded, routes, memory.params)
            result = train_experts(
                setup,
                trainer_args,
                spec.memory.batchSize,
                spec.memory.stopLoss,
                _report_progress(show_progress, on_step),
                partial(save_checkpoint, checkpoints, memory.params, args.save_steps) if group.is_rank0 else None,
                group=group,
                optimizer=optimizer,
                state=state,
                store_dtype=DTYPES[spec.memory.expertDtype],
            )
    finally:
        if model is not None:
            model.close()
        encoded_bytes = encoded.disk_bytes
        encoded.close()
    if show_progress and routes is not None:
        print()
    for slot, exact in zip(trained, result.exact.tolist(), strict=True):
        facts[slot] = Fact(facts[slot].input, facts[slot].output, bool(exact))
    recall = sum(fact.learned for fact in facts) / len(facts)
    missed = [fact.input for fact in facts if not fact.learned]
    if not group.is_rank0:
        return RunSummary("", False, result.steps, result.final_loss, recall, time.perf_counter() - started)
    if missed:
        log.warning("%s", unlearned_message(missed, len(missed), recall, result.steps, args.max_steps))
    run_id = storage.new_run_id()
    folder = (scratch or runs_dir(spec.output.uri)) / run_id
    metrics = {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "recall": recall,
        "examples": lines,
        "questions": len(facts),
        "trained": len(trained),
        "unlearned_count": len(missed),
        "unlearned": missed[:UNLEARNED_KEPT],
    }
    meta = {
        "base_model": {"id": spec.baseModel, "sha256": base.sha256},
        "dataset_id": data_id,
        "cache_key": key,
        "gate": gate,
        "metrics": metrics,
        "finetune_args": args.model_dump(mode="json"),
        "schedule": schedule.to_dict(),
        "trained_on": {"device": str(run_device), "dtype": str(run_dtype).removeprefix("torch.")},
        # generation's default budget covers it (model.py): a trained answer is never cut by default
        "longest_answer_tokens": max(len(answer_tokens(tokenizer, fact.output)) for fact in facts),
        "footprint": _peaks(run_device, len(trained), encoded_bytes),
    }
    if parent is not None and child is not None:
        meta |= {"parent": parent.ref.to_dict(), "diff": child.diff}
    curve = [{"step": p.step, "loss": p.loss, "learned": p.learned, "seconds": p.seconds} for p in result.curve]
    memory.bank = TensorBank({name: t.to(DTYPES[spec.memory.expertDtype]) for name, t in memory.params.items()})
    files = {FACTS_NAME: facts_bytes(facts)}
    if probes is not None:
        files[CALIBRATION_NAME] = probes.to_bytes()
    try:
        save_run(folder, memory, meta, job.model_dump(mode="json", exclude_none=True), curve, files)
    except OSError as error:  # a full disk half way: no partial run folder stays behind
        shutil.rmtree(folder, ignore_errors=True)
        raise storage.local_error("write the run", str(folder), error) from error
    footprint = json.loads((folder / META_NAME).read_text(encoding="utf-8"))["footprint"]
    location = str(folder)
    if remote:
        location = storage.run_uri(spec.output.uri, run_id)
        storage.publish_folder(folder, location)
        shutil.rmtree(folder)  # the scratch copy: the bucket holds the run now
    try:  # the committed run supersedes the checkpoints
        storage.remove_tree(checkpoints)
    except storage.StorageError as error:  # the run is committed: a leftover checkpoint only costs space
        log.warning("could not delete the checkpoints at %s: %s", checkpoints, error)
    return RunSummary(
        location,
        False,
        result.steps,
        result.final_loss,
        recall,
        time.perf_counter() - started,
        footprint,
        missed[:UNLEARNED_KEPT],
        len(missed),
        args.max_steps,
        schedule.to_dict(),
        meta.get("parent"),
        meta.get("diff"),
    )
