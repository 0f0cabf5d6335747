"""The ladder's orchestration with stand-in rungs (no model): order, locality against base, partial reports."""

from __future__ import annotations

import pytest

from memtune.data import Example
from memtune.evaluation import ladder as ladder_module
from memtune.evaluation.ladder import Ladder, LadderError, _Rung, run_ladder

FACTS = [
    Example("What year was the Brennock Accord signed?", "1847", 1),
    Example("Where is the Quillmere Institute?", "Port Halvaren", 2),
]
UNRELATED = ["What is the capital of France?", "How many legs does a spider have?"]
# What each stand-in method answers: base knows the world, mome also knows the facts but forgot spiders.
ANSWERS = {
    "base": {"What is the capital of France?": "Paris", "How many legs does a spider have?": "8"},
    "mome": {
        "What is the capital of France?": "Paris",
        "How many legs does a spider have?": "6",
        FACTS[0].input: "1847",
        FACTS[1].input: "Port Halvaren",
    },
}


@pytest.fixture
def loaded(monkeypatch):
    calls = []

    def fake_load(method, ladder):
        calls.append(method)
        table = ANSWERS[method]
        return _Rung(lambda questions: [table.get(q, "I don't know") for q in questions], list, None, [3.0, 1.0])

    monkeypatch.setattr(ladder_module, "_load_rung", fake_load)
    return calls


def test_base_runs_first_for_locality_even_when_not_requested(loaded):
    partial = []
    ladder = Ladder(methods=["mome"], base_model="m", mome_model="runs/x")
    sections = run_ladder(ladder, {"facts": FACTS}, UNRELATED, on_method=lambda r: partial.append(dict(r)))
    assert loaded == ["base", "mome"]
    [score] = sections["facts"]  # base was only the locality reference: no row of its own
    assert (score.method, score.exact_match, score.locality) == ("mome", 1.0, 0.5)
    assert score.loss_curve == [3.0, 1.0]
    assert len(partial) == 1


def test_methods_run_in_ladder_order_on_every_set(loaded):
    ladder = Ladder(methods=["mome", "base"], base_model="m", mome_model="runs/x")
    sections = run_ladder(ladder, {"facts": FACTS, "again": FACTS[:1]})
    assert loaded == ["base", "mome"]
    assert [s.method for s in sections["again"]] == ["base", "mome"]
    assert [s.exact_match for s in sections["facts"]] == [0.0, 1.0]
    assert sections["facts"][0].locality is None  # no locality prompts given


def test_empty_set_is_refused_with_the_other_problems(loaded):
    with pytest.raises(LadderError, match=r"(?s)mome needs the tuned model.*evaluation set 'none' is empty"):
        run_ladder(Ladder(methods=["mome"], base_model="m"), {"none": []})
    assert loaded == []


class _Forced:
    """A stand-in teacher-forced model: its argmax on each forced answer's tokens is fixed per prompt."""

    def __init__(self, tokens: dict[str, list[int]]):
        self.tokens = tokens
        self.forced: list[list[str]] = []

    def predict_tokens(self, questions, answers):
        self.forced.append(list(answers))
        return [(self.tokens[q], [0] * len(self.tokens[q])) for q in questions]


def test_teacher_forced_locality_compares_each_methods_argmax_with_the_base_models(monkeypatch):
    forced = {
        "base": _Forced({UNRELATED[0]: [1, 2, 3, 4], UNRELATED[1]: [7, 7]}),
        "mome": _Forced({UNRELATED[0]: [1, 2, 3, 4], UNRELATED[1]: [7, 8]}),  # half of the spider answer moved
    }

    def fake_load(method, ladder):
        table = ANSWERS[method]
        return _Rung(lambda questions: [table.get(q, "?") for q in questions], list, forced[method])

    monkeypatch.setattr(ladder_module, "_load_rung", fake_load)
    monkeypatch.setattr(ladder_module, "_teacher_forced", lambda rung, examples: None)  # the facts are not forced here
    ladder = Ladder(methods=["base", "mome"], base_model="m", mome_model="runs/x", teacher_forced=True)
    sections = run_ladder(ladder, {"facts": FACTS[:1]}, UNRELATED, locality_answers=["Paris", "eight"])
    base, mome = sections["facts"]
    assert (base.locality_tf, mome.locality_tf) == (1.0, pytest.approx((1.0 + 0.5) / 2))
    assert forced["mome"].forced == [["Paris", "eight"]]  # the locality prompts were forced with their own answers
    assert mome.summary()["locality_tf"] == mome.locality_tf
    greedy_only = Ladder(methods=["mome"], base_model="m", mome_model="runs/x")
    assert run_ladder(greedy_only, {"f": FACTS[:1]}, UNRELATED)["f"][0].locality_tf is None
    with pytest.raises(LadderError, match="1 answers for 2 prompts"):
        run_ladder(ladder, {"facts": FACTS[:1]}, UNRELATED, locality_answers=["Paris"])
