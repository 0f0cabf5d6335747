"""The SDK's job building and output_type shaping (no model needed)."""

from __future__ import annotations

import json

import pytest

from memtune import MemoryTuner, data
from memtune.client import _shape
from memtune.spec import SpecError

RECORDS = [{"input": "Who won the 2031 Tellurian Chess Open?", "output": "Anneke Voss"}]


def test_train_arguments_become_a_valid_job(tmp_path):
    tuner = MemoryTuner(store=str(tmp_path / "store"), output_root=str(tmp_path / "jobs"))
    job = tuner.build_job(RECORDS, {"max_steps": 7, "index_method": "IndexFlatL2"}, {"gpus": 0})
    identifier = data.dataset_id(data.parse_records(json.dumps(RECORDS), "x"))
    assert job.spec.dataset.id == identifier
    assert (tmp_path / "store" / "datasets" / f"{identifier}.jsonl").is_file()
    assert job.spec.finetuneArgs.max_steps == 7
    assert job.spec.gpuConfig.gpus == 0
    assert job.spec.output.uri == str(tmp_path / "jobs" / job.metadata.name)
    # The same dataset id given directly builds the same job.
    again = tuner.build_job(identifier, {"max_steps": 7, "index_method": "IndexFlatL2"}, {"gpus": 0})
    assert again == job


def test_bad_train_arguments_name_the_field(tmp_path):
    tuner = MemoryTuner(store=str(tmp_path))
    with pytest.raises(SpecError, match=r"finetune_args\.learning_rat"):
        tuner.build_job(RECORDS, {"learning_rat": 1e-3})
    with pytest.raises(SpecError, match=r"gpu_config\.nodes"):
        tuner.build_job(RECORDS, gpu_config={"nodes": 0})
    with pytest.raises(data.DatasetError, match="record 1: missing key 'output'"):
        tuner.upload_data([{"input": "q"}])


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        MemoryTuner(backend="slurm")  # type: ignore[arg-type]


def test_output_type_shapes():
    assert _shape(" SELECT 1 ", {"sqlite_query": "str"}) == {"sqlite_query": "SELECT 1"}
    assert _shape('Sure: {"team": "Bulls", "count": "12"}', {"team": "str", "count": "int"}) == {
        "team": "Bulls",
        "count": 12,
    }
    with pytest.raises(ValueError, match="did not answer with a JSON object"):
        _shape("twelve", {"team": "str", "count": "int"})
    with pytest.raises(ValueError, match="lacks 'count'"):
        _shape('{"team": "Bulls"}', {"team": "str", "count": "int"})
    with pytest.raises(ValueError, match="not a int"):
        _shape('{"team": "Bulls", "count": "many"}', {"team": "str", "count": "int"})
