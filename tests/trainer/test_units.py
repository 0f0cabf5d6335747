"""Model-free units: sparse optimizers, routing/gating, expert hooks, expert sharing."""

from __future__ import annotations

import faiss
import pytest
import torch
from torch import nn

from memtune.trainer.mome.anchors import Anchors, words_of
from memtune.trainer.mome.experts import ExpertHooks, Route, init_experts, mix_experts
from memtune.trainer.mome.router import Router
from memtune.trainer.tuning.assign import assign_experts
from memtune.trainer.tuning.optim import make_optimizer


@pytest.mark.parametrize("kind", ["adamw", "adafactor"])
def test_optimizer_touches_only_routed_rows(kind: str) -> None:
    params = {"A": torch.randn(5, 2, 4, 3)}
    before = params["A"].clone()
    optimizer = make_optimizer(kind, params, lr=0.1)
    rows = torch.tensor([1, 3])
    target = torch.zeros(2, 2, 4, 3)
    for _ in range(20):
        leaf = params["A"][rows].clone().requires_grad_()
        ((leaf - target) ** 2).sum().backward()
        optimizer.step(rows, {"A": leaf.grad})
    untouched = torch.tensor([0, 2, 4])
    assert torch.equal(params["A"][untouched], before[untouched])
    assert params["A"][rows].abs().mean() < before[rows].abs().mean() / 2  # it does descend
    assert optimizer.steps.tolist() == [0, 20, 0, 20, 0]
    for state in optimizer.state["A"].values():
        assert not state[untouched].any()  # no state for experts never routed to


def _router(threshold: float | None, k: int = 2) -> Router:
    keys = nn.functional.normalize(torch.eye(4, 8) + 0.01, dim=-1)  # (4, 8)
    index = faiss.IndexFlatL2(8)
    index.add(keys.numpy())
    return Router(keys, torch.tensor([0, 1, 2, 2]), index, k=k, threshold=threshold, temperature=0.02)


def test_router_gates_far_keys_and_weights_the_nearest() -> None:
    router = _router(threshold=0.1)
    near = nn.functional.normalize(
        router.keys[1] + 0.05 * torch.randn(8, generator=torch.Generator().manual_seed(0)), dim=0
    )
    far = nn.functional.normalize(torch.ones(8), dim=0)
    routing = router(torch.stack([near, far]))
    assert routing.route.experts[0, 0] == 1 and routing.route.weights[0, 0] > 0.99
    assert routing.gated.tolist() == [False, True]
    assert torch.equal(routing.route.weights[1], torch.zeros(2))
    assert router(torch.stack([far])).describe(0)["gated"] is True
    assert not _router(threshold=None)(torch.stack([far])).gated.any()  # gate "always": never gated


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(6, 6)


class _Tiny(nn.Module):
    """The shape ExpertHooks expects: model.model.layers[i].mlp."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_Block(), _Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model.layers:
            x = layer.mlp(x)
        return x


def test_hooks_change_routed_rows_only_and_only_where_asked() -> None:
    model = _Tiny()
    params = init_experts(3, 2, 6, 2, torch.Generator().manual_seed(0))
    params["B"].normal_()
    hooks = ExpertHooks(model, [0, 1])
    x = torch.randn(2, 4, 6)  # (B, T, d)
    plain = model(x)
    route = Route(torch.tensor([[2, 0], [1, 0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # row 1 gated
    with hooks.active(params["A"], params["B"], route, last_only=True):
        last = model(x)
    with hooks.active(params["A"], params["B"], route, last_only=False):
        every = model(x)
    assert torch.equal(last[1], plain[1]) and torch.equal(every[1], plain[1])  # gated row: bit-for-bit base
    assert not torch.allclose(every[0], plain[0])
    # last_only: the first layer changes only the last position, which the second layer keeps local.
    assert torch.equal(last[0, :-1], plain[0, :-1]) and not torch.allclose(last[0, -1], plain[0, -1])
    hooks.remove()
    assert torch.equal(model(x), plain)


def test_mixed_experts_equal_the_weighted_sum_of_each_expert() -> None:
    params = init_experts(5, 3, 6, 2, torch.Generator().manual_seed(1))
    params["B"].normal_()
    route = Route(torch.tensor([[4, 1, 0], [2, 2, 3]]), torch.tensor([[0.7, 0.3, 0.0], [0.5, 0.25, 0.25]]))
    a_mix, b_mix = mix_experts(params["A"], params["B"], route)
    x = torch.randn(2, 4, 6)  # (B, T, d)
    for layer in range(3):
        expected = sum(
            route.weights[:, j, None, None]
            * (x @ params["A"][route.experts[:, j], layer])
            @ params["B"][route.experts[:, j], layer]
            for j in range(3)
        )
        torch.testing.assert_close((x @ a_mix[layer]) @ b_mix[layer], expected)


def test_experts_are_shared_above_the_cap() -> None:
    keys = nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(assign_experts(keys, 100, seed=0), torch.arange(50))
    shared = assign_experts(keys, 10, seed=0)
    assert shared.shape == (50,) and int(shared.max()) < 10
    assert set(shared.tolist()) == set(range(int(shared.max()) + 1))  # no unused expert ids


def test_layout_errors_name_the_field() -> None:
    from memtune.spec import SpecError, parse_job
    from memtune.trainer.tuning.job import plan_layout

    def job(memory: dict) -> object:
        spec = {"dataset": {"uri": "f.jsonl"}, "output": {"uri": "out"}, "memory": memory}
        return parse_job({"metadata": {"name": "x"}, "spec": spec})

    layout = plan_layout(job({}), 30)
    assert layout.expert_layers == list(range(22, 30)) and layout.key_layer == 12
    with pytest.raises(SpecError, match=r"spec\.memory\.keyLayer"):
        plan_layout(job({"keyLayer": 25}), 30)
    with pytest.raises(SpecError, match=r"spec\.memory\.expertLayers"):
        plan_layout(job({"expertLayers": [28, 31]}), 30)


def test_calibrated_threshold_sits_between_rewordings_and_everyday_prompts(caplog) -> None:
    from memtune.trainer.tuning.calibrate import calibrate

    keys = torch.eye(3, 6)  # (3, 6) unit keys
    near = keys + 0.1 * torch.eye(3, 6).roll(1, dims=1)  # squared distance 0.01 to its owner
    far = nn.functional.normalize(torch.ones(2, 6), dim=-1)
    result = calibrate(keys, near, [0, 1, 2], far)
    assert result.near_p95 < result.threshold < result.far_min
    assert not caplog.records
    calibrate(keys, far, [0, 1], keys[:1])  # everyday prompts closer than rewordings: warn, still a threshold
    assert "gate calibration" in caplog.records[0].getMessage()


def test_anchor_check_skips_questions_whose_anchors_are_missing() -> None:
    anchors = Anchors(
        [{"lumdor": 30.0, "pragridor": 35.0}, {}, {"othlo": 24.0, "holdings": 14.0}, {"kalo": 20.0}], share=0.5
    )
    router = _router(threshold=3.0, k=4)  # trained keys are orthogonal: L2² = 2 apart, all within the gate
    router.anchors = anchors
    query = torch.stack([router.keys[0], router.keys[0], router.keys[2]])  # (3, 8): all exactly on a trained key
    prompts = ["where was LUMDOR pragridor born", "Where was Albert Einstein born?", "When was Othlo founded?"]
    routing = router(query, prompts)
    assert routing.gated.tolist() == [False, False, False]
    assert routing.route.experts[0, 0] == 0  # its anchors are present
    # row 1 sits on question 0's key but lacks its anchors: the one question without anchors answers
    assert routing.route.experts[1, 0] == 1 and routing.route.weights[1, 0] > 0.99
    assert routing.route.experts[2, 0] == 2  # "othlo" carries 24 of 38 nats: above half
    lonely = _router(threshold=1.0, k=1)
    lonely.anchors = anchors
    blocked = lonely(router.keys[:1], ["Where was Albert Einstein born?"])
    assert blocked.gated.tolist() == [True] and blocked.describe(0)["distance"] == 0.0  # the raw nearest distance
    assert words_of("Où est né Lumdor-Pragridor ?") == {"où", "est", "né", "lumdor", "pragridor"}


def test_a_question_whose_anchors_are_present_is_gated_at_the_looser_anchored_threshold() -> None:
    router = _router(threshold=1.0, k=1)  # the 4 trained keys are L2² = 2 apart
    router.anchors = Anchors([{"lumdor": 30.0}, {}, {}, {}], share=0.5)
    router.anchored_threshold = 2.5
    off_axis = torch.zeros(8)
    off_axis[6] = 1.0  # a direction no trained key points along
    query = nn.functional.normalize(0.5 * router.keys[0] + off_axis, dim=0)[None].repeat(2, 1)  # (2, 8)
    distance = float(((query[0] - router.keys[0]) ** 2).sum())
    assert 1.0 < distance < 2.5  # beyond the plain gate, within the anchored one
    routing = router(query, ["Who is Lumdor?", "Who is he?"])
    assert routing.gated.tolist() == [False, True]  # the anchor vouches for row 0; row 1 lacks it and is too far
    assert routing.route.experts[0, 0] == 0
    router.anchored_threshold = None
    assert router(query, ["Who is Lumdor?", "Who is he?"]).gated.tolist() == [True, True]
