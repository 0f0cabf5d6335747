"""Incremental memory: a run grown from a parent run that trains only what changed.

    spec:
      memory: {parent: s3://bucket/jobs/facts-v1, mode: replace}   # a run folder, or a job output's newest run

The parent is verified like any run (every checksum before anything is deserialised) and must have been trained on
the job's base model (sha256) with the job's layout (key layer, expert layers, rank) and expert dtype. The job's
dataset, one answer per question as in a fresh run, is compared with the parent's facts.jsonl by question (text
stripped of surrounding whitespace):

- unchanged: same question, same answer. Keeps its key, anchors and expert byte for byte, and is not trained.
- updated: same question, another answer. Keeps its key and anchors (functions of the question alone); its expert
  is re-initialised and trained, so nothing of the old answer survives in it.
- added: a question the parent lacks. A new key (from the frozen pass), anchors and expert, trained.
- forgotten (mode replace): a parent question the dataset lacks. Its key, anchors, index entry and expert are
  removed: the question meets the gate as if it had never been trained (gated, the base model answers bit for bit).
  mode append keeps such questions as unchanged.

Rebuilt or extended, and why:
- keys, per-question evidence (anchors.json), experts: reused; each depends on its own question and answer only.
- the index: rebuilt from the child's keys with the plan for the child's count. It is derived data: Flat and HNSW
  need no training, and an IVF/PQ quantizer trained on the parent's keys would drift from the memory as facts are
  replaced, while a rebuilt one is the index a fresh run over the same keys gets; O(N) beside the training saved.
- the gate's corpus statistics (idf, foreign anchors; anchors.Anchors, gate.Gate): rebuilt over the child's
  questions, since they are defined over the whole set; from the stored evidence, without a model pass.
- the distance threshold: extended (recalibrate.py): the parent's probe keys are kept, only questions that enter
  the calibration sample are probed, and calibrate() runs over the child's keys.

Sharing (more questions than index_max_size): a question added once the experts reach the cap joins the expert of
its nearest question; an expert shared with a changed question is trained with all the questions it serves, which
count as retrained; an expert goes only when no kept question uses it. A child never re-clusters (a run without a
parent does).

The guarantee and its check: an unchanged question whose route (gate decision, experts and weights) is the parent's
and whose experts are untouched answers exactly as before. Under the calibrated gate a trained question routes to
its own slot (its own key and anchors fit it exactly), so this holds; routes are compared all the same, and a
question whose route changed (possible with `gate: always` or `anchorShare: 0`, where top-k mixing may take in a
new neighbour) is retrained and counted as rerouted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memtune.contract import ENV_SCRATCH
from memtune.data import DatasetError, Example, memtune_home, upload_examples
from memtune.manifest import MANIFEST_NAME, IntegrityError
from memtune.spec import MemoryTuningJob, SpecError, is_remote, load_yaml, parse_job
from memtune.trainer.mome.anchors import Anchors, Evidence, evidence, text_evidence
from memtune.trainer.mome.architecture import architecture
from memtune.trainer.mome.artifacts import CALIBRATION_NAME, FACTS_NAME, RunInfo, load_memory, read_run, resolve_run
from memtune.trainer.mome.bank import TensorBank
from memtune.trainer.mome.base import LoadedModel
from memtune.trainer.mome.experts import Route, init_experts
from memtune.trainer.mome.index import build_index, plan_index
from memtune.trainer.mome.keys import tokenize_prompt
from memtune.trainer.mome.memory import Memory, MemoryLayout
from memtune.trainer.mome.router import Routing
from memtune.trainer.tuning import recalibrate
from memtune.trainer.tuning.calibrate import NEAR_SAMPLE, near_probes, neighbour_probes
from memtune.trainer.tuning.distributed import SINGLE, RankGroup
from memtune.trainer.tuning.encode import encode_examples
from memtune.trainer.tuning.optim import SparseOptimizer
from memtune.trainer.tuning.store import EncodedStore

log = logging.getLogger(__name__)

FIELD = "spec.memory.parent"


@dataclass(frozen=True)
class Fact:
    """One slot of a run as facts.jsonl records it."""

    input: str
    output: str
    learned: bool
    """Training ended with every answer token the argmax (the run's recall counts these)."""


def facts_bytes(facts: Sequence[Fact]) -> bytes:
    """facts.jsonl: one {"input", "output", "learned"} object per slot, in slot order."""
    lines = (
        json.dumps({"input": f.input, "output": f.output, "learned": f.learned}, ensure_ascii=False) for f in facts
    )
    return "".join(line + "\n" for line in lines).encode("utf-8")


def read_facts(data: bytes, where: str) -> list[Fact]:
    facts = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            facts.append(Fact(str(record["input"]), str(record["output"]), bool(record["learned"])))
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"{where}: line {number} of {FACTS_NAME} is not a fact ({error})") from None
    return facts


@dataclass
class ParentRef:
    """The verified parent run: enough for the cache key; the memory itself is read by `load_parent`."""

    uri: str
    """As the job names it."""
    run: RunInfo
    identity: str
    """sha256 of the parent's manifest (which holds every file's sha256): what the child's cache key covers."""
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "run_id": self.run_id,
            "manifest_sha256": self.identity,
            "cache_key": self.run.meta.get("cache_key"),
        }


def open_parent(uri: str) -> ParentRef:
    """Find and verify the parent run (fetched first when on s3); SpecError naming spec.memory.parent if it is none.

    Raises IntegrityError for a damaged parent, StorageError when s3 fails."""
    # a trainer pod's home is read-only (the trainer contract): a fetched parent goes to its scratch emptyDir
    scratch = os.environ.get(ENV_SCRATCH)
    folder = resolve_run(uri, Path(scratch) / "runs-cache" if scratch else None)
    if folder is None:
        raise SpecError([(FIELD, f"{uri!r} is neither a run folder nor a job output holding committed runs")])
    try:
        run = read_run(folder)
    except IntegrityError as error:  # say which field named the damaged run
        raise IntegrityError(f"{FIELD}: {error}") from None
    if FACTS_NAME not in run.files:
        raise SpecError(
            [
                (
                    FIELD,
                    f"the run {folder.name} does not list its questions ({FACTS_NAME}); it was written before memtune "
                    "could grow memories: train it once more without a parent (memtune run --no-cache)",
                )
            ]
        )
    manifest = (Path(folder) / MANIFEST_NAME).read_bytes()  # verified by read_run
    run_id = str(json.loads(manifest).get("run_id") or Path(folder).name)
    return ParentRef(uri, run, hashlib.sha256(manifest).hexdigest(), run_id)


@dataclass
class Parent:
    ref: ParentRef
    memory: Memory
    """Its bank in RAM, as stored (float32 or bfloat16)."""
    facts: list[Fact]
    probes: recalibrate.ProbeKeys | None


def load_parent(ref: ParentRef, base_sha256: str) -> Parent:
    """Deserialise the verified parent; SpecError naming spec.baseModel when it was trained on another model."""
    if base_sha256 != ref.run.base_sha256:
        message = (
            f"the parent {ref.run_id} was trained on {ref.run.base_model!r} (sha256 {ref.run.base_sha256[:12]}…), "
            f"this model's sha256 is {base_sha256[:12]}…; a memory grows only on the base model it was trained on"
        )
        raise SpecError([("spec.baseModel", message)])
    folder = ref.run.folder
    memory = load_memory(ref.run, base_sha256, lazy=False)
    facts = read_facts((folder / FACTS_NAME).read_bytes(), str(folder))
    if len(facts) != len(memory.keys):
        raise IntegrityError(f"{folder}: {FACTS_NAME} holds {len(facts)} questions, the keys {len(memory.keys)}")
    probes = None
    if CALIBRATION_NAME in ref.run.files:
        probes = recalibrate.ProbeKeys.from_bytes((folder / CALIBRATION_NAME).read_bytes(), str(folder))
    return Parent(ref, memory, facts, probes)


def check_compatible(parent: Parent, job: MemoryTuningJob, layout: MemoryLayout) -> None:
    """The job must lay its memory out as the parent did: one SpecError naming every field that differs."""
    theirs = parent.memory.layout
    memory = job.spec.memory
    problems = []
    if layout.key_layer != theirs.key_layer:
        problems.append(("spec.memory.keyLayer", f"{layout.key_layer}, the parent's keys come from {theirs.key_layer}"))
    if layout.expert_layers != theirs.expert_layers:
        field_name = "spec.memory.expertLayers" if memory.expertLayers else "spec.memory.numExpertLayers"
        problems.append(
            (field_name, f"layers {layout.expert_layers}, the parent's experts sit on {theirs.expert_layers}")
        )
    if layout.rank != theirs.rank:
        problems.append(("spec.finetuneArgs.r_value", f"{layout.rank}, the parent's experts have rank {theirs.rank}"))
    stored = str(parent.memory.bank.storage_dtype).removeprefix("torch.")
    if memory.expertDtype != stored:
        problems.append(("spec.memory.expertDtype", f"{memory.expertDtype}, the parent stores its experts as {stored}"))
    cap = job.spec.finetuneArgs.index_max_size
    if parent.memory.num_experts > cap:
        problems.append(
            ("spec.finetuneArgs.index_max_size", f"{cap}, below the parent's {parent.memory.num_experts} experts")
        )
    if problems:
        raise SpecError([(path, f"must match the parent: {why}") for path, why in problems], job.metadata.name)


@dataclass
class Diff:
    """The job's questions against the parent's, by parent slot."""

    unchanged: list[int]
    updated: list[tuple[int, Example]]
    added: list[Example]
    forgotten: list[int]
    absent_kept: int = 0
    """mode append: parent questions the dataset lacks, kept (and counted as unchanged)."""

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "forgotten": len(self.forgotten),
            "unchanged": len(self.unchanged),
            "kept_by_append": self.absent_kept,
        }


def diff_facts(parent: Sequence[Fact], examples: Sequence[Example], mode: str) -> Diff:
    """Compare one-answer-per-question `examples` with the parent's facts (questions matched after strip())."""
    slot_of = {fact.input.strip(): slot for slot, fact in enumerate(parent)}
    seen: set[int] = set()
    unchanged, updated, added = [], [], []
    for example in examples:
        slot = slot_of.get(example.input.strip())
        if slot is None:
            added.append(example)
            continue
        seen.add(slot)
        if parent[slot].output == example.output:
            unchanged.append(slot)
        else:
            updated.append((slot, example))
    absent = [slot for slot in range(len(parent)) if slot not in seen]
    if mode == "append":
        return Diff(sorted(unchanged + absent), updated, added, [], len(absent))
    return Diff(sorted(unchanged), updated, added, absent)


@dataclass
class ChildPlan:
    """Slots and experts of the child, before any training. Child slots: the kept parent slots in parent order,
    then the added questions in dataset order."""

    parent_slots: list[int]
    """Child slot -> parent slot, for the kept slots (the first len(parent_slots) child slots)."""
    slot_expert: torch.Tensor
    """(N,) int64 expert of each child slot."""
    expert_origin: list[int]
    """Child expert -> the parent expert it copies, or -1 for one initialised afresh."""
    trainable: torch.Tensor
    """(E,) bool: experts this run may change; every other expert stays byte for byte the parent's."""
    changed: list[int]
    """Child slots of the updated, then the added questions."""


def plan_child(
    parent_slot_expert: torch.Tensor, parent_keys: torch.Tensor, diff: Diff, new_keys: torch.Tensor, cap: int
) -> ChildPlan:
    """Assign the child's slots to experts (see the module docstring). new_keys: (A, d) keys of `diff.added`."""
    kept = sorted(diff.unchanged + [slot for slot, _ in diff.updated])
    position = {slot: child for child, slot in enumerate(kept)}
    parent_experts = parent_slot_expert[kept].tolist()
    origin = sorted(set(parent_experts))
    child_expert = {expert: number for number, expert in enumerate(origin)}
    slot_expert = [child_expert[e] for e in parent_experts]
    serves = Counter(slot_expert)
    trainable: set[int] = set()
    for slot, _ in diff.updated:
        expert = slot_expert[position[slot]]
        if serves[expert] == 1:
            origin[expert] = -1  # its own expert: start again, keeping nothing of the old answer
        trainable.add(expert)
    keys = torch.cat([parent_keys[kept], new_keys])  # (N, d) in child slot order
    for number, key in enumerate(new_keys):
        if len(origin) < cap:
            origin.append(-1)
            expert = len(origin) - 1
        else:  # at the cap: the expert of the nearest question that has one
            expert = slot_expert[int(((keys[: len(kept) + number] - key) ** 2).sum(-1).argmin())]
        slot_expert.append(expert)
        trainable.add(expert)
    changed = [position[slot] for slot, _ in diff.updated] + list(range(len(kept), len(kept) + len(diff.added)))
    mask = torch.zeros(len(origin), dtype=torch.bool)
    mask[sorted(trainable)] = True
    return ChildPlan(kept, torch.tensor(slot_expert, dtype=torch.int64), origin, mask, changed)


def _weights(route: Route, gated: torch.Tensor, row: int) -> dict[int, float]:
    """The experts a row mixes with a weight above zero (a gated row: none)."""
    if bool(gated[row]):
        return {}
    return {int(e): float(w) for e, w in zip(route.experts[row], route.weights[row], strict=True) if float(w) > 0}


def affected_slots(
    plan: ChildPlan,
    parent_routing: Routing,
    child_routing: Routing,
    slots: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(rerouted, touched) among unchanged child `slots` (routed in both memories by their own key and text):
    rerouted when the gate decision, experts or weights differ from the parent's; touched when the route mixes an
    expert this run trains. `plan.trainable` grows by the rerouted slots' own experts."""
    child_of = {parent: child for child, parent in enumerate(plan.expert_origin) if parent >= 0}
    rerouted = []
    for row, slot in enumerate(slots):
        before = {child_of.get(e, -1): w for e, w in _weights(parent_routing.route, parent_routing.gated, row).items()}
        if before != _weights(child_routing.route, child_routing.gated, row):
            rerouted.append(slot)
            plan.trainable[plan.slot_expert[slot]] = True
    touched = [
        slot
        for row, slot in enumerate(slots)
        if slot not in set(rerouted)
        and any(plan.trainable[e] for e in _weights(child_routing.route, child_routing.gated, row))
    ]
    return rerouted, touched


class FrozenRows(SparseOptimizer):
    """Wraps an optimizer so that it steps only the trainable experts: the parent's other experts never change,
    whatever gradient the mixing weights send them."""

    def __init__(self, inner: SparseOptimizer, trainable: torch.Tensor):
        self.inner = inner
        self.params, self.lr, self.steps, self.state = inner.params, inner.lr, inner.steps, inner.state
        self.trainable = trainable.to(inner.steps.device)  # (E,) bool

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
        keep = self.trainable[rows]
        if bool(keep.any()):
            self.inner.step(rows[keep], {name: grad[keep] for name, grad in grads.items()})

    def _direction(self, name: str, rows: torch.Tensor, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("FrozenRows delegates whole steps to the optimizer it wraps")


@dataclass
class Child:
    """The untrained child memory and what training it needs."""

    memory: Memory
    """float32 masters on the model's device: the parent's experts copied, the changed ones initialised."""
    gate: dict[str, Any]
    probes: recalibrate.ProbeKeys | None
    facts: list[Fact]
    """Child slot order; `learned` is the parent's for untouched slots, to be set for the trained ones."""
    trained: list[int]
    """Child slots to train, in the order of the encoded store's entries."""
    plan: ChildPlan
    diff: dict[str, int] = field(default_factory=dict)


def build_child(
    base: LoadedModel,
    parent: Parent,
    diff: Diff,
    job: MemoryTuningJob,
    layout: MemoryLayout,
    encoded: EncodedStore,
    group: RankGroup = SINGLE,
) -> Child:
    """Frozen pass over the changed questions into `encoded`, the child's slots, experts, keys, gate and index.

    `encoded` receives the trained questions at positions 0..len(trained)-1, each rank its own (as build_memory)."""
    memory_spec, args = job.spec.memory, job.spec.finetuneArgs
    changed = [example for _, example in diff.updated] + list(diff.added)
    keys_new, nats_new = _encode(base, changed, 0, layout, memory_spec.batchSize, encoded, group)
    added_keys = keys_new[len(diff.updated) :]
    plan = plan_child(parent.memory.slot_expert, parent.memory.keys, diff, added_keys, args.index_max_size)
    position = {slot: child for child, slot in enumerate(plan.parent_slots)}
    facts = [parent.facts[slot] for slot in plan.parent_slots]
    for slot, example in diff.updated:
        facts[position[slot]] = Fact(parent.facts[slot].input, example.output, False)
    facts += [Fact(example.input, example.output, False) for example in diff.added]
    questions = [fact.input for fact in facts]
    keys = torch.cat([parent.memory.keys[plan.parent_slots], added_keys])  # (N, d): the parent's keys reused
    index_plan = plan_index(args.index_method, len(keys), keys.shape[1], args)
    bank = _bank(parent, plan, layout, memory_spec.seed, base.device)
    memory = Memory(layout, bank, keys, plan.slot_expert, build_index(keys.numpy(), index_plan), index_plan)
    gate: dict[str, Any] = {"mode": memory_spec.gate}
    probes = None
    if memory_spec.gate == "calibrated" and layout.threshold is None:
        probes, probed = _probes(base, parent, plan, questions, layout.key_layer, memory_spec.seed)
        result = probes.calibrate(keys)
        gate.update(result.to_dict())
        gate["calibration_questions_probed"] = probed
        layout.threshold = result.threshold
        log.info("gate calibrated: %s (%d questions probed)", result.to_dict(), probed)
    if layout.threshold is not None and memory_spec.anchorShare > 0:
        memory.anchors = Anchors(_evidence(base, parent, plan, diff, nats_new), memory_spec.anchorShare)
        gate["questions_with_anchors"] = sum(1 for slot in memory.anchors.slots if slot.anchors)
        if "far_min" in gate:  # as build_memory: a prompt with a question's anchors may sit as far as everyday ones
            layout.anchored_threshold = gate["anchored_threshold"] = max(gate["threshold"], gate["far_min"])
    trained = _trained_slots(parent, memory, plan, diff, questions, group)
    extra = [Example(facts[slot].input, facts[slot].output) for slot in trained[len(plan.changed) :]]
    _encode(base, extra, len(plan.changed), layout, memory_spec.batchSize, encoded, group, gather=False)
    summary = diff.summary() | {"retrained": len(extra), "forgotten_gated": _forgotten_gated(parent, memory, diff)}
    if memory.anchors is not None and plan.changed:
        gate["probes"] = _gate_report(base, memory, questions, plan.changed, memory_spec.seed)
    return Child(memory, gate, probes, facts, trained, plan, summary)


def _encode(
    base: LoadedModel,
    examples: Sequence[Example],
    start: int,
    layout: MemoryLayout,
    batch_size: int,
    encoded: EncodedStore,
    group: RankGroup,
    *,
    gather: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Frozen pass over `examples` into store positions start.., each rank the positions it owns (training computes
    position i on the rank that owns i). gather (start 0 only): also return (n, d) keys and each example's
    prompt-token surprisal from every rank; otherwise empty results."""
    positions = list(range(start, start + len(examples)))
    owned = [p for p in positions if group.owns(p)]
    pairs = [(examples[p - start].input, examples[p - start].output) for p in owned]
    first = layout.expert_layers[0]
    width = max((len(tokenize_prompt(base.tokenizer, e.input).ids) for e in examples), default=0) if gather else 0
    key_rows, nats_rows = [], []
    for position, example in zip(owned, encode_examples(base, pairs, layout.key_layer, first, batch_size), strict=True):
        encoded.add(position, example)
        key_rows.append(example.key)
        nats_rows.append(torch.nn.functional.pad(example.token_nats, (0, width - len(example.token_nats))))
    if not gather:
        return torch.empty(0), []
    assert start == 0  # interleave rebuilds positions 0..n-1
    own_keys = torch.stack(key_rows) if key_rows else torch.empty(0, architecture(base.model).hidden_size)
    keys = group.interleave(own_keys, len(examples))  # (n, d)
    nats = group.interleave(torch.stack(nats_rows) if nats_rows else torch.empty(0, width), len(examples))
    return keys, list(nats)


def _bank(parent: Parent, plan: ChildPlan, layout: MemoryLayout, seed: int, device: torch.device) -> TensorBank:
    """float32 masters: the parent's experts where `expert_origin` names one, a fresh initialisation elsewhere."""
    stored = parent.memory.params
    fresh = [number for number, origin in enumerate(plan.expert_origin) if origin < 0]
    generator = torch.Generator().manual_seed(seed)
    hidden = int(stored["A"].shape[2])
    init = init_experts(len(fresh), len(layout.expert_layers), hidden, layout.rank, generator)
    params = {}
    for name, tensor in stored.items():
        out = torch.empty(len(plan.expert_origin), *tensor.shape[1:], dtype=torch.float32)
        copied = [number for number, origin in enumerate(plan.expert_origin) if origin >= 0]
        if copied:
            out[copied] = tensor[[plan.expert_origin[n] for n in copied]].float()
        if fresh:
            out[fresh] = init[name]
        params[name] = out.to(device)
    return TensorBank(params)


def _probes(
    base: LoadedModel, parent: Parent, plan: ChildPlan, questions: Sequence[str], key_layer: int, seed: int
) -> tuple[recalibrate.ProbeKeys, int]:
    """Extend the parent's calibration probes (a fresh measurement when it kept none)."""
    if parent.probes is None:
        log.info("the parent kept no calibration probes: measuring them over the child's questions")
        return recalibrate.measure(base, questions, key_layer, seed), min(len(questions), recalibrate.NEAR_SAMPLE)
    slot_of = {slot: child for child, slot in enumerate(plan.parent_slots)}
    added = list(range(len(plan.parent_slots), len(questions)))
    rng = random.Random(f"{seed}:{parent.ref.identity}")  # noqa: S311 - a sample, not a secret
    return recalibrate.extend(
        parent.probes, slot_of, list(range(len(plan.parent_slots))), added, questions, base, key_layer, rng
    )


def _evidence(
    base: LoadedModel, parent: Parent, plan: ChildPlan, diff: Diff, nats: list[torch.Tensor]
) -> list[Evidence]:
    """Each child slot's evidence: the parent's for kept questions (computed afresh if the parent had no anchors),
    from the frozen pass's surprisal for added ones."""
    kept = plan.parent_slots
    if parent.memory.anchors is not None:
        seen = [parent.memory.anchors.slots[slot] for slot in kept]
    else:
        seen = text_evidence(base, [parent.facts[slot].input for slot in kept])
    for example, row in zip(diff.added, nats[len(diff.updated) :], strict=True):
        tokens = tokenize_prompt(base.tokenizer, example.input)
        seen.append(evidence(example.input, tokens, row[: len(tokens.ids)].tolist()))
    return seen


def _trained_slots(
    parent: Parent, memory: Memory, plan: ChildPlan, diff: Diff, questions: Sequence[str], group: RankGroup
) -> list[int]:
    """The changed slots, then the unchanged ones this run must train too: siblings on a trainable (shared) expert,
    rerouted ones and those whose route mixes a trainable expert (rank 0 decides, every rank follows)."""
    updated = {plan.parent_slots.index(slot) for slot, _ in diff.updated}
    unchanged = [child for child in range(len(plan.parent_slots)) if child not in updated]
    extra = torch.zeros(len(questions), dtype=torch.bool)
    if unchanged:
        texts = [questions[slot] for slot in unchanged]
        before = parent.memory.router()(parent.memory.keys[[plan.parent_slots[s] for s in unchanged]], texts)
        after = memory.router()(memory.keys[unchanged], texts)
        rerouted, touched = affected_slots(plan, before, after, unchanged)
        if rerouted:
            log.warning(
                "%d unchanged questions route differently in the child (e.g. %r): retrained",
                len(rerouted),
                questions[rerouted[0]],
            )
        extra[rerouted + touched] = True
        siblings = plan.trainable[plan.slot_expert[unchanged]]
        extra[torch.tensor(unchanged)[siblings]] = True
    group.broadcast_(extra)
    changed = set(plan.changed)
    return plan.changed + [slot for slot in extra.nonzero()[:, 0].tolist() if slot not in changed]


def _forgotten_gated(parent: Parent, memory: Memory, diff: Diff) -> int:
    """How many forgotten questions the child's gate closes on (their keys from the parent): those get the base
    model's answer; any other opens onto a kept question (another fact of the same entity), said in a warning."""
    if not diff.forgotten:
        return 0
    texts = [parent.facts[slot].input for slot in diff.forgotten]
    routing = memory.router()(parent.memory.keys[diff.forgotten], texts)
    open_rows = (~routing.gated).nonzero()[:, 0].tolist()
    if open_rows:
        log.warning(
            "%d forgotten questions still open the gate onto a kept question (e.g. %r): the base model does not "
            "answer them",
            len(open_rows),
            texts[open_rows[0]],
        )
    return len(texts) - len(open_rows)


def _gate_report(
    base: LoadedModel, memory: Memory, questions: Sequence[str], changed: Sequence[int], seed: int
) -> dict[str, Any]:
    """job._gate_report over this run's changed questions: rewordings of a sample of them admitted to their own slot,
    and their untrained neighbours (another number, name or relation; names from every question) kept out."""
    assert memory.anchors is not None
    rng = random.Random(seed)  # noqa: S311 - a sample, not a secret
    sample = sorted(rng.sample(list(changed), min(NEAR_SAMPLE, len(changed))))
    near, local = near_probes([questions[slot] for slot in sample], limit=len(sample))
    owners = [sample[i] for i in local]
    neighbours = neighbour_probes(questions, memory.anchors.slots, limit=len(sample), seed=seed, among=sample)
    from memtune.trainer.tuning.job import probe_report  # job.py imports this module

    return probe_report(base, memory, near, owners, neighbours)


def forget_job(model_ref: str, questions: Sequence[tuple[int, str]], output: str | None = None) -> MemoryTuningJob:
    """The job `memtune forget` runs: the memory's own job, its dataset the memory's facts less `questions`, grown
    from that memory in mode replace (so nothing is trained and the questions are forgotten).

    questions: (line, question) pairs; a question the memory does not hold is a DatasetError naming its line, raised
    before anything is written. The dataset is stored by content in the local dataset store; the run goes to
    `output`, by default the job output the memory's job wrote to."""
    ref = open_parent(model_ref)
    facts = read_facts((ref.run.folder / FACTS_NAME).read_bytes(), str(ref.run.folder))
    held = {fact.input.strip() for fact in facts}
    unknown = [(line, "not a question of this memory") for line, text in questions if text.strip() not in held]
    if unknown:
        raise DatasetError("questions to forget", unknown)
    dropped = {text.strip() for _, text in questions}
    remaining = [Example(f.input, f.output) for f in facts if f.input.strip() not in dropped]
    if not remaining:
        raise DatasetError("questions to forget", [(0, "these are all the memory's questions: delete the run")])
    document = load_yaml((ref.run.folder / "job.yaml").read_text(encoding="utf-8"), "job.yaml")
    spec = document["spec"]
    spec["dataset"] = {"id": upload_examples(remaining), "store": str(memtune_home())}
    spec.setdefault("finetuneArgs", {}).pop("max_finetuning_examples", None)
    parent = model_ref if is_remote(model_ref) else str(ref.run.folder)
    spec["memory"] = {**spec.get("memory", {}), "parent": parent, "mode": "replace"}
    if output is not None:
        spec["output"] = {"uri": output}
    return parse_job(document, f"{ref.run.folder}/job.yaml")
