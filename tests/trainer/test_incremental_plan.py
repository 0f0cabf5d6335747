"""Incremental memory without a model: the diff, the child's slots and experts, frozen experts, route checks and the
calibration sample a child keeps (tuning/incremental.py, tuning/recalibrate.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from memtune.data import Example
from memtune.trainer.mome.experts import Route
from memtune.trainer.mome.router import Routing
from memtune.trainer.tuning import recalibrate
from memtune.trainer.tuning.calibrate import NEAR_SAMPLE
from memtune.trainer.tuning.incremental import (
    Diff,
    Fact,
    FrozenRows,
    affected_slots,
    diff_facts,
    facts_bytes,
    plan_child,
    read_facts,
)
from memtune.trainer.tuning.optim import make_optimizer

PARENT = [Fact(f"q{i}?", f"a{i}", True) for i in range(5)]


def test_diff_sorts_questions_into_unchanged_updated_added_and_forgotten() -> None:
    examples = [Example(" q0? ", "a0"), Example("q1?", "new"), Example("q9?", "a9"), Example("q3?", "a3")]
    diff = diff_facts(PARENT, examples, "replace")
    assert diff.unchanged == [0, 3]  # q0 matched after strip()
    assert [(slot, e.output) for slot, e in diff.updated] == [(1, "new")]
    assert [e.input for e in diff.added] == ["q9?"]
    assert diff.forgotten == [2, 4]
    appended = diff_facts(PARENT, examples, "append")
    assert appended.unchanged == [0, 2, 3, 4] and appended.forgotten == [] and appended.absent_kept == 2
    assert appended.summary() == {"added": 1, "updated": 1, "forgotten": 0, "unchanged": 4, "kept_by_append": 2}


def test_facts_file_round_trips() -> None:
    facts = [Fact("Où est né Émile ?", "Lyon", True), Fact("q", "a\nb", False)]
    assert read_facts(facts_bytes(facts), "run") == facts


def test_own_experts_are_kept_dropped_reinitialised_or_added() -> None:
    keys = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    diff = Diff(unchanged=[0, 3], updated=[(1, Example("q1?", "new"))], added=[Example("n?", "x")], forgotten=[2, 4])
    plan = plan_child(torch.arange(5), keys, diff, torch.randn(1, 8), cap=100)
    assert plan.parent_slots == [0, 1, 3]
    assert plan.slot_expert.tolist() == [0, 1, 2, 3]
    # parent experts 2 and 4 went with their questions; the updated question's expert starts afresh
    assert plan.expert_origin == [0, -1, 3, -1]
    assert plan.trainable.tolist() == [False, True, False, True]
    assert plan.changed == [1, 3]


def test_at_the_cap_a_new_question_joins_its_nearest_questions_expert() -> None:
    keys = torch.eye(4)  # parent: 4 questions on 2 shared experts (0, 0, 1, 1)
    diff = Diff(unchanged=[0, 1, 2], updated=[(3, Example("q3?", "new"))], added=[Example("n?", "x")], forgotten=[])
    near_question_2 = torch.tensor([[0.0, 0.1, 1.0, 0.0]])
    plan = plan_child(torch.tensor([0, 0, 1, 1]), keys, diff, near_question_2, cap=2)
    assert plan.expert_origin == [0, 1]  # shared: the updated question's expert is trained on, not re-initialised
    assert plan.slot_expert.tolist() == [0, 0, 1, 1, 1]
    assert plan.trainable.tolist() == [False, True]


def test_an_expert_goes_only_with_its_last_question() -> None:
    diff = Diff(unchanged=[0, 2], updated=[], added=[], forgotten=[1, 3])
    plan = plan_child(torch.tensor([0, 0, 1, 1]), torch.eye(4), diff, torch.empty(0, 4), cap=2)
    assert plan.expert_origin == [0, 1] and plan.slot_expert.tolist() == [0, 1] and not plan.trainable.any()


def test_frozen_rows_step_only_the_trainable_experts() -> None:
    params = {"A": torch.randn(3, 1, 4, 2), "B": torch.randn(3, 1, 2, 4)}
    before = {name: tensor.clone() for name, tensor in params.items()}
    optimizer = FrozenRows(make_optimizer("adamw", params, 0.1), torch.tensor([False, True, False]))
    grads = {name: torch.ones(2, *tensor.shape[1:]) for name, tensor in params.items()}
    optimizer.step(torch.tensor([0, 1]), grads)
    assert torch.equal(params["A"][0], before["A"][0]) and torch.equal(params["B"][2], before["B"][2])
    assert not torch.equal(params["A"][1], before["A"][1])
    assert optimizer.steps.tolist() == [0, 1, 0]


def _routing(experts: list[list[int]], weights: list[list[float]], gated: list[bool]) -> Routing:
    return Routing(
        Route(torch.tensor(experts), torch.tensor(weights)),
        torch.zeros(len(gated)),
        torch.tensor(gated),
        ["open"] * len(gated),
    )


def test_a_changed_route_is_rerouted_and_a_route_through_a_trained_expert_is_touched() -> None:
    diff = Diff(unchanged=[0, 1, 2, 3], updated=[], added=[Example("n?", "x")], forgotten=[4])
    plan = plan_child(torch.arange(5), torch.eye(5), diff, torch.randn(1, 5), cap=100)  # child experts 0..3, new 4
    before = _routing([[0, 1], [1, 4], [2, 0], [3, 2]], [[1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [1.0, 0.0]], [False] * 4)
    after = _routing([[0, 1], [1, 0], [2, 4], [3, 2]], [[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [1.0, 0.0]], [False] * 4)
    rerouted, touched = affected_slots(plan, before, after, [0, 1, 2, 3])
    # slot 1 lost the forgotten expert 4 from its mix; slot 2 mixes in the new expert: both changed route
    assert rerouted == [1, 2] and touched == []
    assert plan.trainable.tolist() == [False, True, True, False, True]
    # a gated row stays equal whatever its (weightless) experts
    still = _routing([[3]], [[0.0]], [True])
    assert affected_slots(plan, still, _routing([[1]], [[0.0]], [True]), [3]) == ([], [])


class _Base:
    """Stands in for a loaded model: recalibrate only hands it to question_keys."""


def _fake_keys(monkeypatch: pytest.MonkeyPatch, calls: list[int]) -> None:
    def question_keys(base, questions, key_layer):
        calls.append(len(questions))
        return torch.stack([torch.full((4,), float(len(q))) for q in questions])

    monkeypatch.setattr(recalibrate, "question_keys", question_keys)


def test_child_probes_keep_the_parents_and_probe_only_questions_entering_the_sample(monkeypatch) -> None:
    calls: list[int] = []
    _fake_keys(monkeypatch, calls)
    questions = [f"question {i}?" for i in range(200)]
    parent = recalibrate.measure(_Base(), questions, 0, seed=0)  # type: ignore[arg-type]
    assert len(parent.sampled) == NEAR_SAMPLE and len(parent.far) == len(recalibrate.FAR_PROBES)
    # the child keeps parent slots 0..149 (renumbered 0..149) and adds one question
    slot_of = {slot: slot for slot in range(150)}
    child_questions = [*questions[:150], "a new question?"]
    calls.clear()
    child, probed = recalibrate.extend(
        parent,
        slot_of,
        range(150),
        [150],
        child_questions,
        _Base(),
        0,
        random.Random(1),  # type: ignore[arg-type]
    )
    dropped = [slot for slot in parent.sampled if slot >= 150]
    assert len(child.sampled) == NEAR_SAMPLE
    assert probed == len(set(child.sampled) - set(parent.sampled)) >= len(dropped)
    assert calls == ([4 * probed] if probed else [])  # four edits per newly sampled question, nothing else
    kept = [slot for slot in parent.sampled if slot < 150 and slot in child.sampled]
    for slot in kept:  # an inherited question's probe keys are the parent's, unchanged
        assert torch.equal(
            child.near[[o == slot for o in child.owners]], parent.near[[o == slot for o in parent.owners]]
        )
    assert torch.equal(child.far, parent.far)


def test_reservoir_keeps_the_sample_uniform_as_questions_are_added(monkeypatch) -> None:
    _fake_keys(monkeypatch, [])
    counts: Counter[int] = Counter()
    questions = [f"q{i}" for i in range(2 * NEAR_SAMPLE)]
    parent = recalibrate.measure(_Base(), questions[:NEAR_SAMPLE], 0, seed=0)  # type: ignore[arg-type]
    trials = 300
    for trial in range(trials):  # add NEAR_SAMPLE questions to a full sample: each of 2k questions has p = 1/2
        slot_of = {slot: slot for slot in range(NEAR_SAMPLE)}
        added = range(NEAR_SAMPLE, 2 * NEAR_SAMPLE)
        child, _ = recalibrate.extend(
            parent,
            slot_of,
            range(NEAR_SAMPLE),
            added,
            questions,
            _Base(),
            0,
            random.Random(trial),  # type: ignore[arg-type]
        )
        counts.update(child.sampled)
    old = sum(counts[s] for s in range(NEAR_SAMPLE)) / (NEAR_SAMPLE * trials)
    new = sum(counts[s] for s in range(NEAR_SAMPLE, 2 * NEAR_SAMPLE)) / (NEAR_SAMPLE * trials)
    assert abs(old - 0.5) < 0.03 and abs(new - 0.5) < 0.03  # 300 trials x 64: standard error ~0.004
