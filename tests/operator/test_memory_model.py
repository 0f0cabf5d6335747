"""MemoryModel against the emulated API server: the real kopf operator creates a Deployment and a Service that
are valid objects under Pod Security "restricted", runs the contract's `memtune serve` command on the job's
output, keeps credentials to Secret references, and reports Ready only once a pod passes /readyz."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
import pytest_asyncio

from memtune.serving import contract
from memtune.serving.resource import MemoryModelStatus

from .mtj_cluster import (
    NAMESPACE,
    PYTORCHJOBS,
    SERVING_RESOURCES,
    VALIDATORS,
    Cluster,
    OperatorProcess,
    _admit_restricted,
    chart_grants,
    until,
)
from .mtj_schemas import validate_builtin

MM = kmock.resource("memtune.dev", "v1alpha1", "memorymodels")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
OUTPUT = "s3://runs/facts-demo"
pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def serving_operator(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OperatorProcess]:
    cluster.emulator.resources[MM] = kmock.ResourceInfo(
        kind="MemoryModel", singular="memorymodel", namespaced=True, shortnames={"mm"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, subresources={"status"},
    )  # fmt: skip
    monkeypatch.setitem(VALIDATORS, DEPLOYMENTS, (validate_builtin, _admit_restricted))
    monkeypatch.setitem(VALIDATORS, SERVICES, (validate_builtin,))
    process = OperatorProcess(cluster)
    await process.start()
    yield process
    await process.stop()


async def apply_model(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "memtune.dev/v1alpha1", "kind": "MemoryModel", "metadata": {"name": name}, "spec": spec}
    await cluster.request("POST", f"/apis/memtune.dev/v1alpha1/namespaces/{NAMESPACE}/memorymodels", body)


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    found = (cluster.get(MM, name) or {}).get("status") or {}
    MemoryModelStatus.model_validate(found)  # what the operator writes fits the CRD's status schema
    return found


async def test_a_model_on_a_uri_gets_a_restricted_deployment_and_a_service(
    cluster: Cluster, serving_operator: OperatorProcess
) -> None:
    await apply_model(
        cluster,
        "facts",
        {
            "source": {"uri": OUTPUT},
            "replicas": 2,
            "storage": {"secretRef": {"name": "bucket-creds"}},
            "apiKeySecretRef": {"name": "facts-api", "key": "token"},
            "reloadIntervalSeconds": 15,
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
        },
    )
    deployment = await until(lambda: cluster.get(DEPLOYMENTS, "facts"))
    service = await until(lambda: cluster.get(SERVICES, "facts"))
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "MemoryModel" and owner["name"] == "facts" and owner["controller"] is True
    assert service["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]
    assert deployment["spec"]["replicas"] == 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == contract.serve_command(OUTPUT, name="facts", reload_interval_s=15)
    assert container["image"] == "registry.local/memtune-trainer:test"  # the operator's trainer image
    assert container["envFrom"] == [{"secretRef": {"name": "bucket-creds"}}]
    api_key = next(env for env in container["env"] if env["name"] == contract.ENV_API_KEY)
    assert api_key == {"name": "MEMTUNE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "facts-api", "key": "token"}}}
    assert all("value" not in env or "KEY" not in env["name"] for env in container["env"])  # no secret inline
    assert container["readinessProbe"]["httpGet"]["path"] == contract.READY_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == contract.HEALTH_PATH
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == contract.PORT
    await until(lambda: status(cluster, "facts").get("phase") == "Pending")
    assert "0/2 pods ready" in status(cluster, "facts")["message"]

    # The Deployment controller's part: a pod passes /readyz (memory verified and loaded).
    cluster.emulator.objects[DEPLOYMENTS, NAMESPACE, "facts"].patch({"status": {"readyReplicas": 1, "replicas": 2}})
    await until(lambda: status(cluster, "facts").get("phase") == "Ready", timeout=15)
    ready = status(cluster, "facts")
    assert ready["readyReplicas"] == 1 and ready["url"] == f"http://facts.{NAMESPACE}.svc:8000/v1"
    assert ready["sourceUri"] == OUTPUT


async def test_a_model_on_a_job_waits_for_the_job_to_succeed(
    cluster: Cluster, serving_operator: OperatorProcess
) -> None:
    await apply_model(cluster, "tuned", {"source": {"jobRef": "facts-demo"}})
    await until(lambda: "not found" in (status(cluster, "tuned").get("message") or ""))
    assert cluster.get(DEPLOYMENTS, "tuned") is None
    await cluster.apply_job("facts-demo", {"dataset": {"uri": "s3://data/facts.jsonl"}, "output": {"uri": OUTPUT}})
    await until(lambda: cluster.get(PYTORCHJOBS, "facts-demo-0"))
    await until(lambda: "to succeed" in (status(cluster, "tuned").get("message") or ""), timeout=15)
    assert cluster.get(DEPLOYMENTS, "tuned") is None  # nothing to serve before a run is committed
    # The job runs to success (as Kubeflow and the trainer would report it).
    result = {"artifactsUri": f"{OUTPUT}/runs/r1", "metrics": {"recall": 1.0}}
    state = {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(result)}}
    cluster.add_pod("facts-demo-0", 0, "master", {"phase": "Succeeded", "containerStatuses": [
        {"name": "pytorch", "state": state}]})  # fmt: skip
    cluster.set_child_status(PYTORCHJOBS, "facts-demo-0", {"conditions": [{"type": "Succeeded", "status": "True"}]})
    await until(lambda: cluster.status("facts-demo").get("phase") == "Succeeded", timeout=15)
    deployment = await until(lambda: cluster.get(DEPLOYMENTS, "tuned"), timeout=15)
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--model") + 1] == OUTPUT
    await until(lambda: status(cluster, "tuned").get("sourceUri") == OUTPUT)


async def test_a_spec_change_reaches_the_deployment(cluster: Cluster, serving_operator: OperatorProcess) -> None:
    await apply_model(cluster, "facts", {"source": {"uri": OUTPUT}})
    await until(lambda: cluster.get(DEPLOYMENTS, "facts"))
    path = f"/apis/memtune.dev/v1alpha1/namespaces/{NAMESPACE}/memorymodels/facts"
    await cluster.request("PATCH", path, {"spec": {"replicas": 3, "maxBatch": 8}})
    await until(lambda: cluster.get(DEPLOYMENTS, "facts")["spec"]["replicas"] == 3, timeout=15)
    command = cluster.get(DEPLOYMENTS, "facts")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--max-batch") + 1] == "8"
    # Created, read, patched: every serving right the chart grants is used here, and none it does not grant.
    granted = {(group, resource, verb) for (group, resource), verbs in chart_grants().items() for verb in verbs}
    used = {grant for grant in cluster.emulator.used if grant[1] in SERVING_RESOURCES}
    assert used == {grant for grant in granted if grant[1] in SERVING_RESOURCES}


async def test_a_bad_spec_fails_naming_the_field(cluster: Cluster, serving_operator: OperatorProcess) -> None:
    await apply_model(cluster, "broken", {"source": {"uri": OUTPUT, "jobRef": "facts-demo"}})
    await until(lambda: status(cluster, "broken").get("phase") == "Failed")
    assert "spec.source" in status(cluster, "broken")["message"]
    assert cluster.get(DEPLOYMENTS, "broken") is None
