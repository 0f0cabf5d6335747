"""A MemoryTuningJob through its life on a Kubeflow cluster: Queued → Running → Succeeded, and failures."""

from __future__ import annotations

import json

import pytest
import yaml
from mtj_cluster import CONFIG_MAPS, PYTORCHJOBS, Cluster, OperatorProcess, until
from mtj_schemas import validate_builtin, validate_pytorchjob

from memtune.spec import parse_job

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

    cluster.set_child_status(PYTORCHJOBS, "nba-0", RUNNING)
    cluster.add_pod("nba-0", 0, "master", {"phase": "Running"})
    cluster.serve_log('step 39\nMEMTUNE_PROGRESS {"step": 40, "max_steps": 100, "loss": 0.5}\nMEMTUNE_PROGRESS {"st')
    status = await until(lambda: (s := cluster.status("nba")).get("progress") and s)
    assert status["phase"] == "Running" and status["progress"] == {"step": 40, "maxSteps": 100}
    assert status["startTime"]

    result = {"artifactsUri": "s3://runs/nba/runs/r1", "metrics": {"recall": 0.98, "loss": 0.01}}
    cluster.add_pod("nba-0", 0, "master", _terminated(0, json.dumps(result), "Completed"))
    cluster.set_child_status(PYTORCHJOBS, "nba-0", {"conditions": [{"type": "Succeeded", "status": "True"}]})
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Succeeded" and s)
    assert status["metrics"] == {"recall": 0.98, "loss": 0.01}
    assert status["artifactsUri"] == "s3://runs/nba/runs/r1"
    assert _condition(status, "Ready")["status"] == "True"
    assert _condition(status, "Running")["status"] == "False"
    assert status["completionTime"]
    reasons = [event["reason"] for event in cluster.events()]
    assert reasons == ["Created", "Running", "Succeeded"]
