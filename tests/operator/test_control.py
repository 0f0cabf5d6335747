"""Suspend and resume, bad custom resources, and an operator restarted in the middle of its work."""

from __future__ import annotations

import pytest

from .mtj_cluster import MTJ, PYTORCHJOBS, Cluster, OperatorProcess, until

pytestmark = pytest.mark.asyncio

SPEC = {"dataset": {"uri": "s3://data/facts.jsonl"}, "output": {"uri": "s3://runs/nba"}}


def _failed(status: dict) -> dict:
    return next(condition for condition in status["conditions"] if condition["type"] == "Failed")


def _suspended(cluster: Cluster) -> bool:
    return cluster.get(PYTORCHJOBS, "nba-0")["spec"]["runPolicy"]["suspend"]


async def test_suspend_flows_to_the_child_and_back(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", {**SPEC, "suspend": True})
    await until(lambda: cluster.get(PYTORCHJOBS, "nba-0"))
    assert _suspended(cluster) is True
    await until(lambda: cluster.status("nba").get("phase") == "Suspended")

    await cluster.patch_job("nba", {"spec": {"suspend": False}})
    await until(lambda: _suspended(cluster) is False)
    await until(lambda: cluster.status("nba").get("phase") == "Queued")

    await cluster.patch_job("nba", {"spec": {"suspend": True}})
    await until(lambda: _suspended(cluster) is True)
    await until(lambda: cluster.status("nba").get("phase") == "Suspended")
    # Events are posted after the status patch: wait for the last one instead of racing it.
    reasons = await until(lambda: len(r := [event["reason"] for event in cluster.events()]) >= 3 and r)
    assert reasons == ["Created", "Resumed", "Suspended"]
    assert cluster.names(PYTORCHJOBS) == ["nba-0"]


@pytest.mark.parametrize(
    ("spec", "reason", "named"),
    [
        ({**SPEC, "finetuneArgs": {"max_steps": "many"}}, "InvalidSpec", "spec.finetuneArgs.max_steps"),
        ({**SPEC, "finetuneArgs": {"max_length": 1000}}, "InvalidSpec", "spec.finetuneArgs.max_length"),
        ({"output": {"uri": "s3://runs/x"}}, "InvalidSpec", "spec.dataset"),
        ({**SPEC, "dataset": {"uri": "facts.jsonl"}}, "LocalPath", "spec.dataset.uri"),
        ({**SPEC, "output": {"uri": "/tmp/runs"}}, "LocalPath", "spec.output.uri"),
        ({**SPEC, "memory": {"parent": "runs/facts-v1"}}, "LocalPath", "spec.memory.parent"),
    ],
    ids=["string-for-int", "not-power-of-two", "no-dataset", "local-dataset", "local-output", "local-parent"],
)
async def test_bad_resources_fail_naming_the_field(
    cluster: Cluster, operator: OperatorProcess, spec: dict, reason: str, named: str
) -> None:
    await cluster.apply_job("bad", spec)
    status = await until(lambda: (s := cluster.status("bad")).get("phase") == "Failed" and s)
    assert _failed(status)["reason"] == reason and named in _failed(status)["message"]
    assert cluster.names(PYTORCHJOBS) == []
    # The operator is still alive and serves the next job.
    await cluster.apply_job("nba", SPEC)
    await until(lambda: cluster.get(PYTORCHJOBS, "nba-0"))


async def test_restart_mid_reconcile_leaves_one_child(cluster: Cluster) -> None:
    first = OperatorProcess(cluster)
    await first.start()
    await cluster.apply_job("nba", SPEC)
    await until(lambda: cluster.get(PYTORCHJOBS, "nba-0"))
    await first.stop()
    # As if the operator died after creating the child but before writing the status.
    cluster.emulator.objects[MTJ, "ml", "nba"].patch({"status": None})

    second = OperatorProcess(cluster)
    await second.start()
    await until(lambda: cluster.status("nba").get("phase") == "Queued")
    await second.stop()
    assert cluster.names(PYTORCHJOBS) == ["nba-0"]
    assert cluster.status("nba")["attempt"] == 0
