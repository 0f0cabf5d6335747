"""A MemoryTuningJob through its life on a Kubeflow cluster: Queued → Running → Succeeded, and failures."""

from __future__ import annotations

import json

import pytest
import yaml

from memtune.spec import parse_job
from tests.chart import kstatus

from .mtj_cluster import CONFIG_MAPS, MTJ, PYTORCHJOBS, Cluster, OperatorProcess, until
from .mtj_schemas import validate_builtin, validate_pytorchjob

pytestmark = pytest.mark.asyncio

SPEC = {"dataset": {"uri": "s3://data/facts.jsonl"}, "output": {"uri": "s3://runs/nba"}, "backoffLimit": 1}
RUNNING = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}


def _condition(status: dict, kind: str) -> dict:
    return next(condition for condition in status["conditions"] if condition["type"] == kind)


def _terminated(exit_code: int, message: str = "", reason: str = "Error") -> dict:
    state = {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}
    return {"phase": "Failed" if exit_code else "Succeeded", "containerStatuses": [{"name": "pytorch", "state": state}]}


async def test_job_runs_to_success(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", SPEC)
    child = await until(lambda: cluster.get(PYTORCHJOBS, "nba-0"))
    validate_pytorchjob(child)
    config_map = cluster.get(CONFIG_MAPS, "nba-0-spec")
    validate_builtin(config_map)
    assert parse_job(yaml.safe_load(config_map["data"]["job.yaml"])).spec.output.uri == "s3://runs/nba"
    await until(lambda: cluster.status("nba").get("phase") == "Queued")

    starting = {"waiting": {"reason": "ContainerCreating"}}
    cluster.add_pod("nba-0", 0, "master", {"phase": "Pending", "containerStatuses": [{"state": starting}]})
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Pending" and s)
    pending = _condition(status, "Pending")
    assert (pending["status"], pending["reason"]) == ("True", "PodsStarting")
    assert pending["message"] == "nba-0: pod nba-0-master-0 is Pending (ContainerCreating)"
    assert _condition(status, "Queued")["status"] == "False"
    cluster.set_child_status(PYTORCHJOBS, "nba-0", RUNNING)
    cluster.add_pod("nba-0", 0, "master", {"phase": "Running"})
    cluster.serve_log('step 39\nMEMTUNE_PROGRESS {"step": 40, "max_steps": 100, "loss": 0.5}\nMEMTUNE_PROGRESS {"st')
    status = await until(lambda: (s := cluster.status("nba")).get("progress") and s)
    assert status["phase"] == "Running" and status["backend"] == "PyTorchJob"
    progress = status["progress"]
    assert (progress["step"], progress["maxSteps"], progress["percentage"], progress["loss"]) == (40, 100, 40, 0.5)
    assert status["startTime"]

    result = {"artifactsUri": "s3://runs/nba/runs/r1", "metrics": {"recall": 0.98, "loss": 0.01}}
    cluster.add_pod("nba-0", 0, "master", _terminated(0, json.dumps(result), "Completed"))
    cluster.set_child_status(PYTORCHJOBS, "nba-0", {"conditions": [{"type": "Succeeded", "status": "True"}]})
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Succeeded" and s)
    assert status["metrics"] == {"recall": 0.98, "loss": 0.01}
    assert status["artifactsUri"] == "s3://runs/nba/runs/r1"
    assert _condition(status, "Ready")["status"] == "True"
    assert _condition(status, "Running")["status"] == "False"
    assert _condition(status, "Stalled")["status"] == "False"
    assert kstatus.compute(cluster.get(MTJ, "nba")) == ("Current", "Resource is Ready")
    assert status["completionTime"]
    reasons = await until(lambda: len(r := [event["reason"] for event in cluster.events()]) >= 3 and r)
    assert reasons == ["Created", "Running", "Succeeded"]


async def test_job_grown_from_a_parent_is_scheduled_like_any_other(cluster: Cluster, operator: OperatorProcess) -> None:
    """GitOps (docs/cluster.md): a new dataset version is a new job naming the previous job's output as its parent;
    the operator schedules it as it does any job and the pod's spec file carries the parent for the trainer."""
    memory = {"parent": "s3://runs/nba", "mode": "replace"}
    await cluster.apply_job("nba-v2", {**SPEC, "output": {"uri": "s3://runs/nba-v2"}, "memory": memory})
    child = await until(lambda: cluster.get(PYTORCHJOBS, "nba-v2-0"))
    validate_pytorchjob(child)
    config_map = cluster.get(CONFIG_MAPS, "nba-v2-0-spec")
    validate_builtin(config_map)
    spec = parse_job(yaml.safe_load(config_map["data"]["job.yaml"])).spec
    assert (spec.memory.parent, spec.memory.mode) == ("s3://runs/nba", "replace")
    await until(lambda: cluster.status("nba-v2").get("phase") == "Queued")


async def _running(cluster: Cluster, job: str, attempt: int) -> None:
    child = f"{job}-{attempt}"
    await until(lambda: cluster.get(PYTORCHJOBS, child))
    cluster.set_child_status(PYTORCHJOBS, child, RUNNING)
    cluster.add_pod(child, attempt, "master", {"phase": "Running"})
    await until(lambda: cluster.status(job).get("phase") == "Running")


def _fail_attempt(cluster: Cluster, job: str, attempt: int, pod_status: dict) -> None:
    child = f"{job}-{attempt}"
    cluster.add_pod(child, attempt, "master", pod_status)
    cluster.set_child_status(PYTORCHJOBS, child, {"conditions": [{"type": "Failed", "status": "True", "message": "x"}]})


async def test_retryable_failures_are_retried_up_to_backoff_limit(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", SPEC)  # backoffLimit: 1
    await _running(cluster, "nba", 0)
    _fail_attempt(cluster, "nba", 0, _terminated(137, reason="OOMKilled"))
    await until(lambda: cluster.get(PYTORCHJOBS, "nba-1"))
    assert cluster.status("nba")["attempt"] == 1
    validate_pytorchjob(cluster.get(PYTORCHJOBS, "nba-1"))
    assert cluster.get(CONFIG_MAPS, "nba-1-spec") is not None

    await _running(cluster, "nba", 1)
    _fail_attempt(cluster, "nba", 1, _terminated(137, reason="OOMKilled"))
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Failed" and s)
    failed = _condition(status, "Failed")
    assert failed["reason"] == "OOMKilled" and "backoffLimit=1" in failed["message"]
    assert _condition(status, "Ready") | {"lastTransitionTime": None} == failed | {
        "type": "Ready", "status": "False", "lastTransitionTime": None
    }  # fmt: skip
    # Flux reads Stalled=True as Failed at once, instead of waiting out its timeout on Ready=False.
    assert _condition(status, "Stalled") | {"lastTransitionTime": None} == failed | {
        "type": "Stalled", "lastTransitionTime": None
    }  # fmt: skip
    assert kstatus.compute(cluster.get(MTJ, "nba")) == ("Failed", failed["message"])
    assert cluster.names(PYTORCHJOBS) == ["nba-0", "nba-1"]
    # kopf posts Events on its own, after the status patch: wait for the second one rather than race it.
    warnings = await until(lambda: len(w := [e for e in cluster.events() if e["type"] == "Warning"]) >= 2 and w)
    assert [event["reason"] for event in warnings] == ["OOMKilled", "OOMKilled"]
    assert "out of memory" in warnings[0]["message"]


async def test_exit_code_one_fails_without_retry(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", SPEC)
    await _running(cluster, "nba", 0)
    _fail_attempt(cluster, "nba", 0, _terminated(1, "dataset line 3: missing 'output'"))
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Failed" and s)
    assert _condition(status, "Failed")["reason"] == "TrainerError"
    assert "dataset line 3: missing 'output'" in _condition(status, "Failed")["message"]
    assert cluster.names(PYTORCHJOBS) == ["nba-0"]


async def test_image_pull_error_fails_the_job_and_frees_the_nodes(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", SPEC)
    await until(lambda: cluster.get(PYTORCHJOBS, "nba-0"))
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.local/x"'}}
    cluster.add_pod(
        "nba-0", 0, "master", {"phase": "Pending", "containerStatuses": [{"name": "pytorch", "state": waiting}]}
    )
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Failed" and s)
    assert _condition(status, "Failed")["reason"] == "ImagePullError"
    assert "Back-off pulling image" in _condition(status, "Failed")["message"]
    assert cluster.names(PYTORCHJOBS) == []  # deleted: its pods would wait forever
    await until(lambda: ("Warning", "ImagePullError") in [(e["type"], e["reason"]) for e in cluster.events()])


async def test_active_deadline_is_enforced_by_the_operator(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", {**SPEC, "activeDeadlineSeconds": 1})
    await _running(cluster, "nba", 0)
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Failed" and s, timeout=15)
    assert _condition(status, "Failed")["reason"] == "DeadlineExceeded"
    assert cluster.names(PYTORCHJOBS) == []


async def test_ttl_removes_children_but_keeps_the_job(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", {**SPEC, "ttlSecondsAfterFinished": 0})
    await _running(cluster, "nba", 0)
    cluster.set_child_status(PYTORCHJOBS, "nba-0", {"conditions": [{"type": "Succeeded", "status": "True"}]})
    await until(lambda: not cluster.names(PYTORCHJOBS) and not cluster.names(CONFIG_MAPS))
    assert cluster.status("nba")["phase"] == "Succeeded"
