"""The children the operator creates, for each shape of gpuConfig and each backend, validated against the
schemas a real cluster applies (Kubeflow's PyTorchJob CRD + webhook rules, Kubernetes' own for Job/ConfigMap)."""

from __future__ import annotations

import pytest

from .mtj_cluster import CONFIG_MAPS, JOBS, PYTORCHJOBS, Cluster, OperatorProcess, until
from .mtj_schemas import validate_builtin, validate_pytorchjob

pytestmark = pytest.mark.asyncio

SPEC = {
    "dataset": {"uri": "s3://data/facts.jsonl"},
    "output": {"uri": "s3://runs/nba"},
    "storage": {"secretRef": {"name": "s3-creds"}},
    "queueName": "gpu-queue",
    "trainer": {
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"requests": {"memory": "32Gi"}},
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccountName": "trainer",
        "priorityClassName": "high",
    },
}


def _pod(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    return container


@pytest.mark.parametrize(
    ("gpus", "nodes", "workers", "nproc"),
    [(1, 1, None, "1"), (8, 2, 1, "8"), (0, 4, 3, "1")],
    ids=["1x1", "2x8", "4-cpu"],
)
async def test_pytorchjob_shape(
    cluster: Cluster, operator: OperatorProcess, gpus: int, nodes: int, workers: int | None, nproc: str
) -> None:
    await cluster.apply_job("nba", {**SPEC, "gpuConfig": {"gpus": gpus, "nodes": nodes}})
    child = await until(lambda: cluster.get(PYTORCHJOBS, "nba-0"))
    validate_pytorchjob(child)
    replicas = child["spec"]["pytorchReplicaSpecs"]
    assert child["spec"]["nprocPerNode"] == nproc
    # Created suspended: with a queue, Kueue admits it by unsuspending.
    assert child["spec"]["runPolicy"] == {"suspend": True, "backoffLimit": 0, "cleanPodPolicy": "None"}
    assert (replicas["Worker"]["replicas"] if "Worker" in replicas else None) == workers
    assert child["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    (owner,) = child["metadata"]["ownerReferences"]
    assert owner["kind"] == "MemoryTuningJob" and owner["name"] == "nba" and owner["controller"] is True

    for replica in replicas.values():
        container = _pod(replica["template"])
        assert container["name"] == "pytorch"
        assert container["image"] == "registry.local/memtune-trainer:test"
        assert container["command"] == ["python", "-m", "memtune.trainer", "--spec", "/etc/memtune/job.yaml"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        literal = {env["name"] for env in container["env"] if "value" in env}  # the user's HF_TOKEN: valueFrom
        assert literal == {"MEMTUNE_JOB_NAME", "MEMTUNE_ATTEMPT", "MEMTUNE_SCRATCH", "HOME", "TMPDIR"}
        limits = container["resources"].get("limits", {})
        assert limits.get("nvidia.com/gpu") == (gpus or None)
        assert container["resources"]["requests"] == {"memory": "32Gi"}
    validate_builtin(cluster.get(CONFIG_MAPS, "nba-0-spec"))


async def test_batch_job_where_kubeflow_is_missing(
    cluster: Cluster, operator_without_kubeflow: OperatorProcess
) -> None:
    await cluster.apply_job("nba", {**SPEC, "gpuConfig": {"gpus": 2, "nodes": 1}})
    child = await until(lambda: cluster.get(JOBS, "nba-0"))
    validate_builtin(child)
    assert child["spec"]["backoffLimit"] == 0 and child["spec"]["suspend"] is True  # Kueue admits it
    assert _pod(child["spec"]["template"])["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert cluster.names(PYTORCHJOBS) == []

    cluster.emulator.objects[JOBS, "ml", "nba-0"].patch({"spec": {"suspend": False}})  # Kueue admits it
    cluster.set_child_status(JOBS, "nba-0", {"active": 1})
    await until(lambda: cluster.status("nba").get("phase") == "Running")
    cluster.set_child_status(JOBS, "nba-0", {"conditions": [{"type": "Complete", "status": "True"}]})
    await until(lambda: cluster.status("nba").get("phase") == "Succeeded")


async def test_multi_node_without_kubeflow_fails_clearly(
    cluster: Cluster, operator_without_kubeflow: OperatorProcess
) -> None:
    await cluster.apply_job("nba", {**SPEC, "gpuConfig": {"gpus": 8, "nodes": 2}})
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Failed" and s)
    failed = next(condition for condition in status["conditions"] if condition["type"] == "Failed")
    assert failed["reason"] == "KubeflowMissing" and "spec.gpuConfig.nodes is 2" in failed["message"]
    assert cluster.names(JOBS) == [] and cluster.names(PYTORCHJOBS) == []
