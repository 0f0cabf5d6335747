"""Every shipped manifest validates and its dataset loads: examples are part of the product."""

from __future__ import annotations

from pathlib import Path

import pytest

from memtune import data
from memtune.spec import load_job_file, local_paths_in, resolve_local_paths

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_examples():
    assert {path.name for path in MANIFESTS} >= {"facts-job.yaml", "nba-sql-job.yaml"}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_manifest_validates_and_its_data_loads(manifest):
    job = resolve_local_paths(load_job_file(manifest), manifest.parent)
    examples = data.load_examples(job.spec.dataset, job.spec.finetuneArgs.max_finetuning_examples)
    assert examples
    # The recipes set the index explicitly rather than relying on the IVF-PQ default meant for huge banks.
    assert "index_method" in job.spec.finetuneArgs.model_fields_set


def test_paraphrases_match_the_facts_one_to_one():
    facts = data.read_examples(str(EXAMPLES / "facts.jsonl"))
    paraphrases = data.read_examples(str(EXAMPLES / "facts-paraphrases.jsonl"))
    assert [f.output for f in facts] == [p.output for p in paraphrases]
    assert all(f.input != p.input for f, p in zip(facts, paraphrases, strict=True))


@pytest.mark.parametrize("manifest", sorted((EXAMPLES / "cluster").glob("*.yaml")), ids=lambda path: path.name)
def test_cluster_manifest_validates_and_points_only_at_object_storage(manifest):
    job = load_job_file(manifest)
    assert local_paths_in(job.spec) == []
    assert job.spec.storage.secretRef is not None


def test_one_cluster_example_per_backend():
    backends = {load_job_file(path).spec.backend for path in (EXAMPLES / "cluster").glob("*.yaml")}
    assert backends >= {"trainjob", "pytorchjob", "job"}
