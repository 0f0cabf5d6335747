"""Model-free units: sparse optimizers, routing/gating, expert hooks, expert sharing."""

from __future__ import annotations

import faiss
import pytest
import torch
from torch import nn

from memtune.trainer.mome.anchors import Anchors, Evidence, evidence
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


def _tiny_llama() -> nn.Module:
    """A 2-layer, 8-wide random Llama: the hooks sit on real decoder blocks' MLPs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, vocab_size=16, pad_token_id=0
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_hooks_change_routed_rows_only_and_only_where_asked() -> None:
    model = _tiny_llama()
    params = init_experts(3, 2, 8, 2, torch.Generator().manual_seed(0))
    params["B"].normal_()
    hooks = ExpertHooks(model, [0, 1])
    ids = torch.randint(1, 16, (2, 4), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        route = Route(torch.tensor([[2, 0], [1, 0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # row 1 gated
        with hooks.active(params["A"], params["B"], route, last_only=True):
            last = model(input_ids=ids).logits
        with hooks.active(params["A"], params["B"], route, last_only=False):
            every = model(input_ids=ids).logits
    assert torch.equal(last[1], plain[1]) and torch.equal(every[1], plain[1])  # gated row: bit-for-bit base
    assert not torch.allclose(every[0], plain[0])
    # last_only: the experts touch only the last position, and causal attention keeps the change there.
    assert torch.equal(last[0, :-1], plain[0, :-1]) and not torch.allclose(last[0, -1], plain[0, -1])
    hooks.remove()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain)


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

    layout = plan_layout(job({}), 30)  # the default model
    assert layout.expert_layers == list(range(22, 30)) and layout.key_layer == 12
    with pytest.raises(SpecError, match=r"spec\.memory\.keyLayer"):
        plan_layout(job({"keyLayer": 25}), 30)
    with pytest.raises(SpecError, match=r"spec\.memory\.expertLayers"):
        plan_layout(job({"expertLayers": [28, 31]}), 30)
    with pytest.raises(SpecError, match=r"spec\.memory\.expertLayers"):
        plan_layout(job({"expertLayers": [0, 5]}), 30)  # no layer left below for the key
    with pytest.raises(SpecError, match=r"spec\.memory\.numExpertLayers"):
        plan_layout(job({"numExpertLayers": 10}), 10)
    assert plan_layout(job({"numExpertLayers": 2}), 30).expert_layers == [28, 29]
    assert plan_layout(job({"expertLayers": [3, 4]}), 30).key_layer == 2  # the default key stays below the experts


def test_default_layout_fits_every_depth() -> None:
    from memtune.spec import parse_job
    from memtune.trainer.tuning.job import plan_layout

    job = parse_job({"metadata": {"name": "x"}, "spec": {"dataset": {"uri": "f.jsonl"}, "output": {"uri": "out"}}})
    for depth in range(2, 129):
        layout = plan_layout(job, depth)
        experts = layout.expert_layers
        assert experts == list(range(depth - len(experts), depth)) and 1 <= len(experts) <= 8
        assert 0 <= layout.key_layer < experts[0]
    assert (plan_layout(job, 10).key_layer, plan_layout(job, 10).expert_layers) == (4, [5, 6, 7, 8, 9])
    assert (plan_layout(job, 4).key_layer, plan_layout(job, 4).expert_layers) == (1, [2, 3])
    assert (plan_layout(job, 32).key_layer, plan_layout(job, 32).expert_layers) == (13, list(range(24, 32)))


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


def _ev(text: str, **anchors: float) -> Evidence:
    """A question's evidence with the given anchor nats (hard units get theirs from `evidence`)."""
    found = evidence(text)
    return Evidence(found.units, {**found.anchors, **anchors})


def test_anchor_agreement_counts_foreign_names_and_requires_the_same_numbers() -> None:
    anchors = Anchors(
        [
            _ev("What is the employee ID of Anna Voss?", anna=10.0, voss=12.0),
            _ev("Which office is Bert Kerr in?", bert=11.0, kerr=13.0),
            _ev("What is the access code of vault 7 in the Zanmir archive?", zanmir=20.0),
        ],
        share=0.6,
    )
    idf = anchors.idf  # each unit weighs nats x idf; here every name occurs once, so idf is the same for all
    assert idf["anna"] == idf["kerr"] == idf["zanmir"] > idf["is"]  # "is" is in two of the three questions
    assert anchors.agreement(0, evidence("what's the employee id of ANNA VOSS")) == 1.0  # a rewording
    # a namesake: Anna is covered, Voss missing, and Kerr is an anchor of another trained question: foreign
    assert anchors.agreement(0, evidence("What is the employee ID of Anna Kerr?")) == pytest.approx(10 / 35)
    # an unknown name: Voss is missing; the prompt's own surprising units count as foreign when given
    assert anchors.agreement(0, evidence("What is the employee ID of Anna Quill?")) == pytest.approx(10 / 22)
    stranger = evidence("What is the employee ID of Anna Quill?")
    stranger = Evidence(stranger.units, {"anna": 9.0, "quill": 14.0})
    assert anchors.agreement(0, stranger) < anchors.agreement(0, evidence("What is the employee ID of Anna Quill?"))
    assert anchors.agreement(2, evidence("What is the access code of vault 7 in the Zanmir archive, please?")) == 1.0
    assert anchors.agreement(2, evidence("What is the access code of vault 3 in the Zanmir archive?")) == 0.0
    assert anchors.agreement(2, evidence("What is the access code of vault 7 in the Zanmir archive, room 2?")) == 0.0


def test_evidence_sums_token_surprisal_per_unit() -> None:
    from memtune.trainer.mome.keys import PromptTokens

    text = "Who is Lumdor 7?"
    # tokens: "Who", " is", " Lum", "dor", " 7", "?" at their spans inside a prompt that starts 3 characters earlier
    spans = [(3, 6), (6, 9), (9, 13), (13, 16), (16, 18), (18, 19)]
    tokens = PromptTokens(ids=list(range(6)), question_mask=[True] * 6, offsets=spans, question_start=3)
    found = evidence(text, tokens, [0.0, 1.0, 5.0, 6.0, 0.5, 0.1])
    assert found.anchors == {"lumdor": 11.0, "7": 8.0}  # 5 + 6 nats; a number is an anchor whatever its surprisal
    assert found.units == {"who", "is", "lumdor", "7"} and found.hard == {"7"}


def test_encoded_store_round_trips_every_field_and_deletes_its_file(tmp_path) -> None:
    from memtune.trainer.tuning.encode import Encoded
    from memtune.trainer.tuning.store import EncodedStore

    def example(seed: int, prompt: int, answer: int) -> Encoded:
        g = torch.Generator().manual_seed(seed)
        return Encoded(
            key=torch.randn(6, generator=g),
            prefix_k=torch.randn(2, 3, prompt, 4, generator=g),
            prefix_v=torch.randn(2, 3, prompt, 4, generator=g).to(torch.bfloat16),
            region=torch.randn(answer, 6, generator=g),
            targets=torch.arange(answer),
            token_nats=torch.rand(prompt + 1, generator=g),
        )

    originals = {0: example(0, 5, 2), 2: example(1, 9, 4)}
    with EncodedStore(3, tmp_path) as store:
        for index, encoded in originals.items():
            store.add(index, encoded)
        (scratch,) = tmp_path.iterdir()
        assert store.disk_bytes == scratch.stat().st_size > 0
        assert store[1] is None and len(store) == 3  # a question this rank does not own
        for index, encoded in originals.items():
            back = store[index]
            for name in ("key", "prefix_k", "prefix_v", "region", "targets", "token_nats"):
                assert torch.equal(getattr(back, name), getattr(encoded, name)), name
                assert getattr(back, name).dtype == getattr(encoded, name).dtype
    assert not list(tmp_path.iterdir())
