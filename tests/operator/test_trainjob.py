"""Kubeflow Trainer v2: MemoryTuningJobs as TrainJobs naming the chart's runtime, in every shape, through Kueue's
admission (played by the test: create suspended, later unsuspend), with progress and ETA in status. Every
TrainJob sent is validated in flight against the vendored v2.3.0 CRD and composed with the chart's runtime
(`mtj_cluster.VALIDATORS`)."""

from __future__ import annotations

import json

import pytest

from memtune import contract

from .controllers import trainjob_pod
from .mtj_cluster import CONFIG_MAPS, JOBS, PYTORCHJOBS, TRAINJOBS, Cluster, OperatorProcess, until
from .mtj_schemas import chart_runtime, validate_trainjob

pytestmark = pytest.mark.asyncio

SPEC = {
    "dataset": {"uri": "s3://data/facts.jsonl"},
    "output": {"uri": "s3://runs/nba"},
    "storage": {"secretRef": {"name": "s3-creds"}},
    "trainer": {
        "nodeSelector": {"gpu": "h100"},
        "resources": {"requests": {"memory": "32Gi"}},
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "serviceAccountName": "trainer",
    },
}


def _condition(status: dict, kind: str) -> dict:
    return next(condition for condition in status["conditions"] if condition["type"] == kind)


@pytest.mark.parametrize(("gpus", "nodes"), [(1, 1), (8, 2), (0, 4)], ids=["1x1", "2x8", "4-cpu"])
async def test_trainjob_shape(cluster: Cluster, operator_with_trainer: OperatorProcess, gpus: int, nodes: int) -> None:
    await cluster.apply_job("nba", {**SPEC, "gpuConfig": {"gpus": gpus, "nodes": nodes}})
    child = await until(lambda: cluster.get(TRAINJOBS, "nba-0"))
    validate_trainjob(child)
    trainer = child["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, max(gpus, 1))
    assert trainer["resourcesPerNode"].get("limits", {}).get("nvidia.com/gpu") == (gpus or None)
    assert trainer["resourcesPerNode"]["requests"] == {"memory": "32Gi"}
    assert child["spec"]["runtimeRef"]["name"] == "memtune-torch" and child["spec"]["suspend"] is False
    # Credentials by Secret reference only: each storage key by secretKeyRef, no literal value.
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e}
    assert {name for name, ref in secret_refs.items() if ref["name"] == "s3-creds"} == set(contract.STORAGE_SECRET_KEYS)
    assert secret_refs["HF_TOKEN"] == {"name": "hf", "key": "token"}

    pod = trainjob_pod(child, chart_runtime())  # what Trainer makes of it, one per node
    (node,) = pod["spec"]["containers"]
    assert node["command"] == contract.TRAINER_COMMAND and node["image"] == "registry.local/memtune-trainer:test"
    env = {e["name"]: e.get("value") for e in node["env"]}
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == (str(nodes), str(max(gpus, 1)))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["memtune-spec"]["configMap"]["name"] == "nba-0-spec"
    assert ("memtune-shm" in volumes) == bool(gpus)
    assert {m["mountPath"] for m in node["volumeMounts"]} >= {"/etc/memtune", "/tmp", "/scratch"}
    assert pod["spec"]["serviceAccountName"] == "trainer" and pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert (
        pod["metadata"]["labels"]["memtune.dev/job"] == "nba"
        and pod["metadata"]["labels"]["memtune.dev/role"] == "node"
    )

    config_map = cluster.get(CONFIG_MAPS, "nba-0-spec")
    assert config_map["metadata"]["labels"][contract.BACKEND_LABEL] == "TrainJob"
    status = await until(lambda: (s := cluster.status("nba")).get("backend") and s)
    assert status["backend"] == "TrainJob"
    # auto prefers a TrainJob: no PyTorchJob or Job although Kubeflow v1 is installed too.
    assert cluster.names(PYTORCHJOBS) == [] and cluster.names(JOBS) == []


def _running_pod(cluster: Cluster, attempt: int = 0) -> None:
    cluster.add_pod(f"nba-{attempt}", attempt, "node", {"phase": "Running"}, index=0)
    cluster.add_pod(f"nba-{attempt}", attempt, "node", {"phase": "Running"}, index=1)


async def test_kueue_admits_by_unsuspending_and_the_clock_waits(
    cluster: Cluster, operator_with_trainer: OperatorProcess
) -> None:
    await cluster.apply_job("nba", {**SPEC, "queueName": "gpu-queue", "gpuConfig": {"gpus": 8, "nodes": 2}})
    child = await until(lambda: cluster.get(TRAINJOBS, "nba-0"))
    assert child["spec"]["suspend"] is True and child["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Queued" and s)
    assert _condition(status, "Queued")["reason"] == "WaitingForAdmission"

    # Kueue admits: it unsuspends the TrainJob; Trainer's JobSet starts the pods.
    cluster.emulator.objects[TRAINJOBS, "ml", "nba-0"].patch({"spec": {"suspend": False}})
    cluster.set_child_status(TRAINJOBS, "nba-0", {"jobsStatus": [{"name": "node", "active": 1, "failed": 0,
                             "ready": 1, "succeeded": 0, "suspended": 0}]})  # fmt: skip
    _running_pod(cluster)
    cluster.serve_log('MEMTUNE_PROGRESS {"step": 10, "max_steps": 100, "loss": 0.9}\n')
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Running" and s)
    assert status["startTime"]

    # Kueue preempts: suspends it again. The job is held, the deadline's clock stops.
    cluster.emulator.objects[TRAINJOBS, "ml", "nba-0"].patch({"spec": {"suspend": True}})
    status = await until(lambda: (s := cluster.status("nba")).get("suspendedSince") and s)
    assert status["phase"] == "Queued" and _condition(status, "Queued")["reason"] == "WaitingForAdmission"
    cluster.emulator.objects[TRAINJOBS, "ml", "nba-0"].patch({"spec": {"suspend": False}})
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Running" and s)
    assert status.get("suspendedSince") is None and status["suspendedSeconds"] >= 0

    result = {"artifactsUri": "s3://runs/nba/runs/r1", "metrics": {"recall": 1.0}}
    terminated = {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(result)}}
    cluster.add_pod(
        "nba-0", 0, "node", {"phase": "Succeeded", "containerStatuses": [{"name": "node", "state": terminated}]}
    )
    cluster.set_child_status(TRAINJOBS, "nba-0", {"conditions": [{"type": "Complete", "status": "True"}]})
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Succeeded" and s)
    assert status["metrics"] == {"recall": 1.0} and status["artifactsUri"] == "s3://runs/nba/runs/r1"
    # The operator never unsuspended the child itself: admission is Kueue's.
    patches = [r for r in cluster.requests_to(TRAINJOBS, "PATCH") if "kopf" in r.headers.get("User-Agent", "")
               or "memtune" in r.headers.get("User-Agent", "")]  # fmt: skip
    assert patches == []


async def test_progress_percentage_and_eta_from_step_reports(
    cluster: Cluster, operator_with_trainer: OperatorProcess
) -> None:
    await cluster.apply_job("nba", {**SPEC, "gpuConfig": {"gpus": 1, "nodes": 1}})
    await until(lambda: cluster.get(TRAINJOBS, "nba-0"))
    cluster.set_child_status(TRAINJOBS, "nba-0", {"jobsStatus": [{"name": "node", "active": 1, "failed": 0,
                             "ready": 1, "succeeded": 0, "suspended": 0}]})  # fmt: skip
    cluster.add_pod("nba-0", 0, "node", {"phase": "Running"})
    cluster.serve_log('MEMTUNE_PROGRESS {"step": 10, "max_steps": 100, "loss": 0.9}\n')
    first = await until(lambda: (p := cluster.status("nba").get("progress")) and p)
    assert (first["step"], first["percentage"], first["loss"]) == (10, 10, 0.9)
    assert first.get("estimatedRemainingSeconds") is None  # one report: no rate yet
    await until(lambda: cluster.status("nba")["progress"]["updateTime"] > first["firstStepTime"], timeout=5)
    cluster.serve_log('MEMTUNE_PROGRESS {"step": 55, "max_steps": 100, "loss": 0.2}\n')
    later = await until(lambda: (p := cluster.status("nba")["progress"])["step"] == 55 and p)
    assert (later["percentage"], later["loss"], later["firstStep"]) == (55, 0.2, 10)
    # 45 steps took at least a second (the timestamps' resolution), so 45 more take about as long again.
    assert 0 < later["estimatedRemainingSeconds"] <= 45 * 60
