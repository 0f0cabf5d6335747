"""The gate without a model: hand-made evidence (units and anchor nats) and keys, every way a neighbour differs."""

from __future__ import annotations

import faiss
import torch
from torch import nn

from memtune.trainer.mome.anchors import Anchors, Evidence, evidence
from memtune.trainer.mome.gate import Gate
from memtune.trainer.mome.router import Router

# Trained questions; their anchors are the names (what the base model cannot predict) and any number.
TRAINED = [
    ("What is the employee ID of Anna Voss?", {"anna": 10.0, "voss": 14.0}),
    ("Which office is Anna Voss in?", {"anna": 10.0, "voss": 14.0, "office": 8.5}),
    ("What is the employee ID of Bert Kerr?", {"bert": 11.0, "kerr": 13.0}),
    ("Which office is Carl Kerr in?", {"carl": 12.0, "kerr": 13.0, "office": 8.5}),
    ("Who is the manager of Dora Lind?", {"dora": 12.0, "lind": 15.0}),
    ("What is the access code of vault 7 in the Zanmir archive?", {"zanmir": 20.0}),
]


def _evidence(text: str, anchors: dict[str, float]) -> Evidence:
    found = evidence(text)
    return Evidence(found.units, {**found.anchors, **anchors})


def _gate(threshold: float = 0.1, anchored: float | None = 0.2) -> Gate:
    return Gate(Anchors([_evidence(q, a) for q, a in TRAINED], share=0.5), threshold, anchored)


def _decide(gate: Gate, prompt: str, anchors: dict[str, float], distances: list[float] | None = None):
    """Every trained question is a candidate, all at the same small distance unless given."""
    slots = list(range(len(TRAINED)))
    return gate.decide(slots, distances or [0.01] * len(slots), _evidence(prompt, anchors))


def test_rewordings_reach_their_own_question() -> None:
    gate = _gate()
    assert _decide(gate, "what's the employee id of ANNA VOSS", {"anna": 9.0, "voss": 15.0}).slot == 0
    assert _decide(gate, "Please tell me: Which office is Anna Voss in?", {"anna": 9.0, "voss": 15.0}).slot == 1
    # the nearest key is another question of the same entity: the one whose units explain the prompt still wins
    distances = [0.03, 0.01, 0.05, 0.05, 0.05, 0.05]
    assert _decide(gate, "Which employee ID does Anna Voss have?", {"anna": 9.0, "voss": 15.0}, distances).slot == 0


def test_a_namesake_asking_a_trained_attribute_is_gated() -> None:
    decision = _decide(_gate(), "What is the employee ID of Anna Kerr?", {"anna": 9.0, "kerr": 12.0})
    assert (decision.slot, decision.reason) == (-1, "entity")
    decision = _decide(_gate(), "What is the employee ID of Anna Quill?", {"anna": 9.0, "quill": 14.0})
    assert (decision.slot, decision.reason) == (-1, "entity")  # a stranger's name, surprising in the prompt


def test_an_untrained_attribute_of_a_trained_entity_is_gated() -> None:
    # Dora Lind's manager is trained, her office is not; offices are trained for others: another known relation
    decision = _decide(_gate(), "Which office is Dora Lind in?", {"dora": 11.0, "lind": 14.0})
    assert (decision.slot, decision.reason) == (-1, "relation")
    decision = _decide(_gate(), "Who is the manager of Anna Voss?", {"anna": 9.0, "voss": 15.0})
    assert (decision.slot, decision.reason) == (-1, "relation")


def test_another_number_is_another_question() -> None:
    gate = _gate()
    assert _decide(gate, "Which access code opens vault 7 of the Zanmir archive?", {"zanmir": 19.0}).slot == 5
    assert _decide(gate, "What is the access code of vault 3 in the Zanmir archive?", {"zanmir": 19.0}).slot == -1


def test_distance_limits_with_and_without_anchors() -> None:
    gate = _gate(threshold=0.1, anchored=0.2)
    prompt, anchors = "What is the employee ID of Anna Voss?", {"anna": 9.0, "voss": 15.0}
    assert _decide(gate, prompt, anchors, [0.15] * 6).slot == 0  # anchors vouch: the looser limit holds
    assert _decide(gate, prompt, anchors, [0.25] * 6).reason == "far"
    assert _decide(_gate(threshold=0.1, anchored=None), prompt, anchors, [0.15] * 6).reason == "far"


def test_the_router_routes_to_the_chosen_question_or_to_nobody() -> None:
    keys = nn.functional.normalize(torch.eye(len(TRAINED), 8) + 0.01, dim=-1)  # (6, 8)
    index = faiss.IndexFlatL2(8)
    index.add(keys.numpy())
    slot_expert = torch.tensor([0, 1, 2, 3, 4, 4])  # the last two questions share an expert
    gate = _gate(threshold=3.0, anchored=None)  # every key within reach: the evidence decides
    router = Router(keys, slot_expert, index, k=2, threshold=3.0, temperature=0.02, gate=gate)
    prompts = ["Which office is Carl Kerr in, please?", "Which office is Dora Lind in?", "vault 7 of Zanmir archive"]
    routing = router(keys[[3, 3, 5]], prompts)  # (3, 8): each query sits on a trained key
    assert routing.gated.tolist() == [False, True, False]
    assert routing.route.experts[:, 0].tolist()[0::2] == [3, 4] and routing.route.weights[:, 0].tolist() == [1, 0, 1]
    assert routing.describe(1) == {"experts": [3], "distance": 0.0, "gated": True, "reason": "relation"}
    # without prompts (or without a gate) the k nearest are mixed by distance
    plain = router(keys[[3]])
    assert plain.route.experts.shape == (1, 2) and plain.reasons == ["ungated"]
