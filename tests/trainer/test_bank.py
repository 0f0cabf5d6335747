"""The expert bank read lazily from a run's shards, devices and dtypes: model-free (synthetic runs, random experts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from memtune.manifest import IntegrityError
from memtune.spec import FinetuneArgs, SpecError
from memtune.trainer.mome import artifacts
from memtune.trainer.mome.artifacts import load_memory, read_run, save_run
from memtune.trainer.mome.bank import LazyBank, TensorBank
from memtune.trainer.mome.devices import resolve_device, resolve_dtype
from memtune.trainer.mome.experts import ExpertHooks, Route, init_experts
from memtune.trainer.mome.index import build_index, plan_index
from memtune.trainer.mome.memory import Memory, MemoryLayout

SHA = "0" * 64


def synthetic_run(folder: Path, count: int, *, dtype: torch.dtype = torch.float32, hidden: int = 16) -> Path:
    """A committed run of `count` random experts written by the real save_run."""
    generator = torch.Generator().manual_seed(0)
    params = init_experts(count, 2, hidden, 4, generator)
    params["B"].normal_(generator=generator)
    params = {name: tensor.to(dtype) for name, tensor in params.items()}
    keys = nn.functional.normalize(torch.randn(count, hidden, generator=generator), dim=-1)
    plan = plan_index("IndexFlatL2", count, hidden, FinetuneArgs())
    layout = MemoryLayout(1, [2, 3], 4, 2, None, 0.02)
    memory = Memory(layout, TensorBank(params), keys, torch.arange(count), build_index(keys.numpy(), plan), plan)
    meta = {"base_model": {"id": "synthetic", "sha256": SHA}, "cache_key": "synthetic"}
    save_run(folder, memory, meta, {}, [{"step": 1, "loss": 1.0}])
    return folder


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several shards for a small bank: each expert of the synthetic run is 1 KiB in float32."""
    monkeypatch.setattr(artifacts, "SHARD_BYTES", 3 * 1024)


def test_a_lazy_bank_reads_only_the_experts_routed_to_and_matches_the_eager_one(tmp_path: Path, small_shards) -> None:
    run = read_run(synthetic_run(tmp_path / "run", 10))
    assert run.meta["experts"]["shards"] == 4 and run.meta["experts"]["dtype"] == "float32"
    eager = load_memory(run, SHA).bank
    lazy = load_memory(run, SHA, lazy=True).bank
    assert isinstance(eager, TensorBank) and isinstance(lazy, LazyBank)
    assert lazy.reads == 0 and lazy.count == eager.count == 10
    assert lazy.bytes_per_expert == eager.bytes_per_expert == run.meta["experts"]["bytes_per_expert"]
    wanted = torch.tensor([9, 2, 5])  # experts in three different shards
    got = lazy.gather(wanted, torch.device("cpu"), torch.float32)
    expected = eager.gather(wanted, torch.device("cpu"), torch.float32)
    assert all(torch.equal(got[name], expected[name]) for name in ("A", "B"))
    assert lazy.reads == 3
    lazy.gather(torch.tensor([2, 9]), torch.device("cpu"), torch.float32)
    assert lazy.reads == 3  # both still hot on the device
    assert all(torch.equal(lazy.tensors()[name], eager.params[name]) for name in ("A", "B"))


def test_the_lru_keeps_at_most_its_budget_of_experts(tmp_path: Path) -> None:
    run = read_run(synthetic_run(tmp_path / "run", 6))
    lazy = LazyBank([run.folder / name for name in run.files if name.startswith("experts/")], 6, cache_bytes=2048)
    cpu = torch.device("cpu")
    for expert in (0, 1, 2):  # 1 KiB each in float32: the third evicts the first
        lazy.gather(torch.tensor([expert]), cpu, torch.float32)
    lazy.gather(torch.tensor([2]), cpu, torch.float32)
    assert lazy.reads == 3
    lazy.gather(torch.tensor([0]), cpu, torch.float32)
    assert lazy.reads == 4
    with pytest.raises(IndexError, match="outside the bank"):
        lazy.gather(torch.tensor([6]), cpu, torch.float32)


def test_a_bfloat16_bank_is_stored_as_such_and_upcast_on_gather(tmp_path: Path) -> None:
    run = read_run(synthetic_run(tmp_path / "run", 4, dtype=torch.bfloat16))
    assert run.meta["experts"]["dtype"] == "bfloat16"
    lazy = load_memory(run, SHA, lazy=True).bank
    assert lazy.storage_dtype == torch.bfloat16 and lazy.bytes_per_expert == run.meta["experts"]["bytes_per_expert"]
    got = lazy.gather(torch.tensor([1]), torch.device("cpu"), torch.float32)
    assert got["A"].dtype == torch.float32
    assert torch.equal(got["A"][0].to(torch.bfloat16), load_memory(run, SHA).params["A"][1])


def test_a_run_whose_metadata_disagrees_with_its_shards_is_refused(tmp_path: Path) -> None:
    folder = synthetic_run(tmp_path / "run", 4)
    run = read_run(folder)
    run.meta["experts"]["count"] = 5
    with pytest.raises(IntegrityError, match="the shards hold 4 experts, the run says 5"):
        load_memory(run, SHA, lazy=True)
    run.meta["experts"]["count"] = 4
    run.meta["experts"]["dtype"] = "bfloat16"
    with pytest.raises(IntegrityError, match=r"memtune\.json says bfloat16"):
        load_memory(run, SHA)
    assert json.loads((folder / "memtune.json").read_text())["experts"]["count"] == 4


def test_devices_auto_detect_and_say_when_there_is_no_accelerator(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(SpecError, match="dtype"):
        resolve_dtype("float64", cpu)
    with pytest.raises(SpecError, match=r"device: 'tpu'"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device(None).type == "cuda" and resolve_dtype(None, torch.device("cuda")) != torch.float32
        return
    with caplog.at_level(logging.WARNING):
        assert resolve_device("auto") == cpu
    assert "no CUDA device" in caplog.text and "CPU" in caplog.text
    with pytest.raises(SpecError, match="no CUDA device"):
        resolve_device("cuda")


def test_float32_experts_add_to_a_bfloat16_model_in_its_dtype() -> None:
    from tests.trainer.test_units import _tiny_llama

    model = _tiny_llama()
    params = init_experts(2, 2, 8, 2, torch.Generator().manual_seed(0))
    params["B"].normal_()
    route = Route(torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.0]]))
    ids = torch.randint(1, 16, (1, 3), generator=torch.Generator().manual_seed(1))
    hooks = ExpertHooks(model, [0, 1])
    with torch.no_grad(), hooks.active(params["A"], params["B"], route, last_only=False):
        full = model(input_ids=ids).logits
        half = model.to(torch.bfloat16)(input_ids=ids).logits
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.05)
