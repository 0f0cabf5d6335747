"""The MemoryTuningJob spec: Lamini's defaults, and every way a bad value is refused with its field named."""

from __future__ import annotations

import pytest

from memtune.spec import (
    FinetuneArgs,
    SpecError,
    load_yaml,
    local_paths_in,
    parse_finetune_args,
    parse_gpu_config,
    parse_job,
    resolve_local_paths,
)

LAMINI_DEFAULTS = {
    "max_steps": 100,
    "learning_rate": 9.0e-4,
    "gradient_accumulation_steps": 2,
    "max_finetuning_examples": None,
    "save_steps": 60,
    "max_length": 2048,
    "optim": "adafactor",
    "r_value": 64,
    "index_method": "IndexIVFPQ",
    "index_k": 2,
    "index_max_size": 65536,
    "index_pq_m": 8,
    "index_pq_nbits": 8,
    "index_ivf_nlist": 2048,
    "index_ivf_nprobe": 48,
    "index_hnsw_m": 32,
    "index_hnsw_efConstruction": 16,
    "index_hnsw_efSearch": 8,
}


def test_every_finetune_arg_has_laminis_default():
    assert FinetuneArgs().model_dump() == LAMINI_DEFAULTS


# (field, bad value, words the error must contain). Each row is one rejection path.
REJECTIONS = [
    ("max_steps", 0, "greater than or equal to 1"),
    ("max_steps", "100", "valid integer"),
    ("max_steps", 10.5, "valid integer"),
    ("learning_rate", 0, "greater than 0"),
    ("learning_rate", 2.0, "less than or equal to 1"),
    ("learning_rate", "fast", "valid number"),
    ("gradient_accumulation_steps", 0, "greater than or equal to 1"),
    ("max_finetuning_examples", 0, "greater than or equal to 1"),
    ("max_finetuning_examples", "all", "valid integer"),
    ("save_steps", 0, "greater than or equal to 1"),
    ("max_length", 1000, "power of two"),
    ("max_length", 16384, "less than or equal to 8192"),
    ("max_length", 8, "greater than or equal to 16"),
    ("optim", "sgd", "'adafactor' or 'adamw'"),
    ("r_value", 0, "greater than or equal to 1"),
    ("r_value", True, "valid integer"),
    ("index_method", "IndexLSH", "IndexFlatL2"),
    ("index_k", 0, "greater than or equal to 1"),
    ("index_max_size", 0, "greater than or equal to 1"),
    ("index_pq_m", 0, "greater than or equal to 1"),
    ("index_pq_nbits", 17, "less than or equal to 16"),
    ("index_ivf_nlist", 0, "greater than or equal to 1"),
    ("index_ivf_nprobe", 0, "greater than or equal to 1"),
    ("index_hnsw_m", 1, "greater than or equal to 2"),
    ("index_hnsw_efConstruction", 0, "greater than or equal to 1"),
    ("index_hnsw_efSearch", 0, "greater than or equal to 1"),
]


def test_rejections_cover_every_finetune_arg():
    assert {field for field, _, _ in REJECTIONS} == set(LAMINI_DEFAULTS)


@pytest.mark.parametrize(("field", "value", "words"), REJECTIONS)
def test_bad_finetune_arg_is_refused_naming_the_field(field, value, words):
    with pytest.raises(SpecError) as caught:
        parse_finetune_args({field: value})
    assert caught.value.problems[0][0] == f"finetune_args.{field}"
    assert words in caught.value.problems[0][1]


def test_unknown_key_and_several_problems_come_in_one_error():
    with pytest.raises(SpecError) as caught:
        parse_finetune_args({"max_step": 10, "learning_rate": -1, "optim": "sgd"})
    fields = [path for path, _ in caught.value.problems]
    assert fields == ["finetune_args.learning_rate", "finetune_args.optim", "finetune_args.max_step"]
    assert "3 problems" in str(caught.value)


def test_cross_field_rules():
    with pytest.raises(SpecError, match=r"index_ivf_nprobe .* must not exceed index_ivf_nlist"):
        parse_finetune_args({"index_ivf_nlist": 16})
    with pytest.raises(SpecError, match=r"index_k .* must not exceed index_max_size"):
        parse_finetune_args({"index_k": 4, "index_max_size": 2})
    assert parse_finetune_args({"index_ivf_nlist": 16, "index_ivf_nprobe": 16}).index_ivf_nlist == 16


def test_gpu_config_defaults_and_limits():
    assert parse_gpu_config(None).model_dump() == {"gpus": 1, "nodes": 1}
    assert parse_gpu_config({"gpus": 0}).gpus == 0
    with pytest.raises(SpecError, match=r"gpu_config\.nodes"):
        parse_gpu_config({"nodes": 0})
    with pytest.raises(SpecError, match=r"gpu_config\.gpus"):
        parse_gpu_config({"gpus": -1})


MANIFEST = """
apiVersion: memtune.dev/v1alpha1
kind: MemoryTuningJob
metadata: {name: facts}
spec:
  dataset: {uri: data/facts.jsonl}
  finetuneArgs: {learning_rate: 3e-4, max_steps: 500}
  output: {uri: runs/facts}
"""


def test_manifest_reads_exponent_floats_and_fills_defaults():
    job = parse_job(load_yaml(MANIFEST))
    assert job.spec.finetuneArgs.learning_rate == pytest.approx(3e-4)
    assert job.spec.finetuneArgs.index_method == "IndexIVFPQ"
    assert job.spec.baseModel == "smollm2-135m-instruct"
    assert job.spec.gpuConfig.gpus == 1


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["metadata"].update(name="Facts_1"), "metadata.name"),
        (lambda d: d["metadata"].update(name="x" * 41), "metadata.name"),
        (lambda d: d.update(kind="Job"), "kind"),
        (lambda d: d["spec"].update(dataset={"uri": "a.jsonl", "id": "0" * 64}), "spec.dataset"),
        (lambda d: d["spec"].update(dataset={}), "spec.dataset"),
        (lambda d: d["spec"].update(dataset={"id": "not-a-sha"}), "spec.dataset.id"),
        (lambda d: d["spec"].pop("output"), "spec.output"),
        (lambda d: d["spec"].update(gpuConfig={"gpus": "2"}), "spec.gpuConfig.gpus"),
        (lambda d: d["spec"].update(memory={"batchSize": 0}), "spec.memory.batchSize"),
        (lambda d: d["spec"].update(surprise=True), "spec.surprise"),
        (lambda d: d["spec"]["finetuneArgs"].update(max_steps=-5), "spec.finetuneArgs.max_steps"),
    ],
)
def test_bad_manifest_names_the_field(edit, field):
    document = load_yaml(MANIFEST)
    edit(document)
    with pytest.raises(SpecError) as caught:
        parse_job(document)
    assert any(path.startswith(field) for path, _ in caught.value.problems), caught.value.problems


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    job = resolve_local_paths(parse_job(load_yaml(MANIFEST)), tmp_path)
    assert job.spec.dataset.uri == str(tmp_path / "data/facts.jsonl")
    assert job.spec.output.uri == str(tmp_path / "runs/facts")
    assert [field for field, _ in local_paths_in(job.spec)] == ["spec.dataset.uri", "spec.output.uri"]


def test_remote_uris_are_left_alone_and_pass_cluster_checks(tmp_path):
    document = load_yaml(MANIFEST)
    document["spec"]["dataset"] = {"uri": "s3://bucket/facts.jsonl"}
    document["spec"]["output"] = {"uri": "s3://bucket/runs"}
    job = resolve_local_paths(parse_job(document), tmp_path)
    assert job.spec.dataset.uri == "s3://bucket/facts.jsonl"
    assert local_paths_in(job.spec) == []
