"""Trainer pods meet Pod Security "restricted" with a read-only root, and can still write where the contract says.

Built straight from the backends (no API server): every backend × CPU/GPU × single/multi-node shape. The same
check also runs in flight on every object the operator sends to the emulated cluster (`mtj_cluster._check`).
"""

from __future__ import annotations

from typing import Any

import pytest

from memtune.operator.backends import BatchJobBackend, PyTorchJobBackend
from memtune.operator.settings import OperatorSettings
from memtune.spec import parse_job
from tests.chart.pod_security import pod_specs, restricted_violations

OWNER = {"apiVersion": "memtune.dev/v1alpha1", "kind": "MemoryTuningJob", "metadata": {"name": "nba", "uid": "u1"}}
SHAPES = [
    (PyTorchJobBackend(), 0, 1),
    (PyTorchJobBackend(), 8, 2),
    (PyTorchJobBackend(), 0, 4),
    (BatchJobBackend(), 0, 1),
    (BatchJobBackend(), 2, 1),
]
IDS = ["pytorchjob-cpu", "pytorchjob-2x8", "pytorchjob-4-cpu", "job-cpu", "job-gpu"]


def _child(backend: Any, gpus: int, nodes: int, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec = {
        "dataset": {"uri": "s3://data/facts.jsonl"},
        "output": {"uri": "s3://runs/nba"},
        "gpuConfig": {"gpus": gpus, "nodes": nodes},
        "trainer": {"env": env or []},
    }
    job = parse_job({"metadata": {"name": "nba", "namespace": "ml"}, "spec": spec})
    return backend.build(job, 0, OWNER, OperatorSettings())


def _writable_mounts(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath → emptyDir source, for the trainer container's writable emptyDir mounts."""
    empty_dirs = {volume["name"]: volume["emptyDir"] for volume in pod["volumes"] if "emptyDir" in volume}
    (container,) = pod["containers"]
    return {
        mount["mountPath"]: empty_dirs[mount["name"]]
        for mount in container["volumeMounts"]
        if mount["name"] in empty_dirs and not mount.get("readOnly")
    }


@pytest.mark.parametrize(("backend", "gpus", "nodes"), SHAPES, ids=IDS)
def test_every_trainer_pod_is_restricted(backend: Any, gpus: int, nodes: int) -> None:
    child = _child(backend, gpus, nodes)
    assert restricted_violations(child) == []
    for _, pod in pod_specs(child):
        assert pod["securityContext"] | {"seccompProfile": None} == {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532, "seccompProfile": None,
        }  # fmt: skip


@pytest.mark.parametrize(("backend", "gpus", "nodes"), SHAPES, ids=IDS)
def test_writable_paths_are_empty_dirs_and_shm_is_memory_for_gpus(backend: Any, gpus: int, nodes: int) -> None:
    pods = list(pod_specs(_child(backend, gpus, nodes)))
    assert len(pods) == (2 if nodes > 1 else 1)  # Master (+ Worker) templates, or the Job's one
    for _, pod in pods:
        writable = _writable_mounts(pod)
        expected = {"/tmp": {}, "/scratch": {}} | ({"/dev/shm": {"medium": "Memory"}} if gpus else {})
        assert writable == expected
        (container,) = pod["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        # Every directory the trainer is told to write to is one of the emptyDirs; nothing else is writable.
        for name in ("HOME", "TMPDIR", "MEMTUNE_SCRATCH"):
            assert env[name] in writable, name
        assert not any(mount["mountPath"].startswith("/opt/memtune") for mount in container["volumeMounts"])


def test_the_check_catches_a_pod_that_could_write_its_root() -> None:
    child = _child(PyTorchJobBackend(), 1, 1)
    (container,) = child["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    del container["securityContext"]["readOnlyRootFilesystem"]
    assert restricted_violations(child) == [
        "PyTorchJob/nba-0[Master]: containers[pytorch]: securityContext.readOnlyRootFilesystem must be true"
        " (memtune's own rule)"
    ]


def test_user_env_comes_after_the_writable_defaults_so_it_can_move_them() -> None:
    child = _child(BatchJobBackend(), 0, 1, env=[{"name": "TMPDIR", "value": "/scratch/tmp"}])
    (container,) = child["spec"]["template"]["spec"]["containers"]
    values = [item.get("value") for item in container["env"] if item["name"] == "TMPDIR"]
    assert values == ["/tmp", "/scratch/tmp"]  # Kubernetes keeps the last of duplicate names
