"""Issue 13's operator cases, each against the real kopf operator and the emulated API server: one child per
attempt whatever is installed meanwhile (7), a refused child fails visibly (8), the deadline's clock stops while
suspended (9), no kopf finalizer strands a job after `helm uninstall` (10), no spec in kopf's annotations (12),
the admin's values decide the image and service account (13), and RBAC is exactly what the operator calls (14)."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import memtune.operator.kube
from memtune import contract

from .mtj_cluster import (
    CONFIG_MAPS,
    JOBS,
    MTJ,
    NAMESPACE,
    PODS,
    PYTORCHJOBS,
    SERVING_RESOURCES,
    TRAINJOBS,
    Cluster,
    OperatorProcess,
    chart_grants,
    install_crd,
    until,
)
from .mtj_schemas import PYTORCHJOB_CRD, TRAINJOB_CRD

pytestmark = pytest.mark.asyncio

SPEC = {"dataset": {"uri": "s3://data/facts.jsonl"}, "output": {"uri": "s3://runs/nba"}}
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def _condition(status: dict, kind: str) -> dict:
    return next(condition for condition in status["conditions"] if condition["type"] == kind)


def _install_kubeflow(cluster: Cluster) -> None:
    install_crd(cluster.emulator, yaml.safe_load(PYTORCHJOB_CRD.read_text()))
    install_crd(cluster.emulator, yaml.safe_load(TRAINJOB_CRD.read_text()))


async def _resyncs(cluster: Cluster, name: str, count: int = 5) -> None:
    """Wait until the operator has run `count` more passes over `name` (each reads the job first)."""

    def passes() -> int:
        reads = cluster.requests_to(MTJ, "GET")
        return sum(1 for r in reads if r.name == name and r.headers.get("User-Agent", "").startswith("memtune"))

    start = passes()
    await until(lambda: passes() >= start + count)


async def test_kubeflow_installed_mid_run_gets_no_second_child(
    cluster: Cluster, operator_without_kubeflow: OperatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memtune.operator.kube, "CRD_CACHE_SECONDS", 0.0)  # every pass asks again
    await cluster.apply_job("nba", SPEC)
    await until(lambda: cluster.get(JOBS, "nba-0"))
    await until(lambda: cluster.status("nba").get("backend") == "Job")
    _install_kubeflow(cluster)  # without a restart, the CRD cache expired
    await _resyncs(cluster, "nba")
    await operator_without_kubeflow.stop()  # and with one
    await operator_without_kubeflow.start()
    await _resyncs(cluster, "nba")
    assert cluster.names(TRAINJOBS) == [] and cluster.names(PYTORCHJOBS) == [] and cluster.names(JOBS) == ["nba-0"]
    assert cluster.status("nba")["backend"] == "Job"


async def test_a_crash_before_the_status_was_written_still_gets_no_second_child(
    cluster: Cluster, operator_without_kubeflow: OperatorProcess
) -> None:
    await cluster.apply_job("nba", SPEC)
    await until(lambda: cluster.get(JOBS, "nba-0"))
    await operator_without_kubeflow.stop()
    # As if the operator died right after creating the child: no status, and Kubeflow installed meanwhile.
    cluster.emulator.objects[MTJ, NAMESPACE, "nba"].patch({"status": None})
    _install_kubeflow(cluster)
    await operator_without_kubeflow.start()
    await until(lambda: cluster.status("nba").get("backend") == "Job")
    await _resyncs(cluster, "nba")
    assert cluster.names(TRAINJOBS) == [] and cluster.names(PYTORCHJOBS) == [] and cluster.names(JOBS) == ["nba-0"]
    labels = cluster.get(CONFIG_MAPS, "nba-0-spec")["metadata"]["labels"]
    assert labels[contract.BACKEND_LABEL] == "Job"


@pytest.mark.parametrize("kind", ["PyTorchJob", "ConfigMap"])
async def test_a_refused_child_fails_the_job_naming_the_reason(
    cluster: Cluster, operator: OperatorProcess, kind: str
) -> None:
    reason = 'spec.pytorchReplicaSpecs[Master].template.spec.containers[0].resources.limits: Invalid value: "2"'

    def webhook(request):  # an admission webhook / schema refusing the object
        return reason if (request.data or {}).get("kind") == kind else None

    cluster.emulator.refuse = webhook
    await cluster.apply_job("nba", SPEC)
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Failed" and s)
    failed = _condition(status, "Failed")
    assert failed["reason"] == "ChildRejected" and reason in failed["message"] and "422" in failed["message"]
    warnings = await until(lambda: [e for e in cluster.events() if e["reason"] == "ChildRejected"])
    assert reason in warnings[0]["message"]
    await asyncio.sleep(1.0)  # five resync intervals: a failed job is not tried again
    posts = cluster.requests_to(PYTORCHJOBS if kind == "PyTorchJob" else CONFIG_MAPS, "POST")
    assert len(posts) == 1


async def test_suspending_stops_the_deadline_clock(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.apply_job("nba", {**SPEC, "activeDeadlineSeconds": 3})
    await until(lambda: cluster.get(PYTORCHJOBS, "nba-0"))
    cluster.set_child_status(PYTORCHJOBS, "nba-0", {"conditions": [{"type": "Running", "status": "True"}]})
    cluster.add_pod("nba-0", 0, "master", {"phase": "Running"})
    await until(lambda: cluster.status("nba").get("phase") == "Running")
    await cluster.patch_job("nba", {"spec": {"suspend": True}})
    await until(lambda: cluster.status("nba").get("phase") == "Suspended")
    await asyncio.sleep(4)  # held longer than the whole deadline
    status = cluster.status("nba")
    assert status["phase"] == "Suspended" and status.get("suspendedSince")
    assert cluster.names(PYTORCHJOBS) == ["nba-0"]
    await cluster.patch_job("nba", {"spec": {"suspend": False}})
    status = await until(lambda: (s := cluster.status("nba")).get("phase") == "Failed" and s, timeout=15)
    failed = _condition(status, "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "not counting time suspended" in failed["message"]
    assert status["suspendedSeconds"] >= 4


async def test_no_finalizer_strands_a_job_after_uninstall(cluster: Cluster, operator: OperatorProcess) -> None:
    # A job an older operator version handled still carries kopf's finalizer: this version takes it off.
    await operator.stop()
    await cluster.apply_job("old", SPEC)
    cluster.emulator.objects[MTJ, NAMESPACE, "old"].patch({"metadata": {"finalizers": [KOPF_FINALIZER]}})
    await operator.start()
    await cluster.apply_job("nba", SPEC)
    await until(lambda: cluster.status("nba").get("phase") == "Queued")
    await until(lambda: not cluster.get(MTJ, "old")["metadata"].get("finalizers"))
    await _resyncs(cluster, "nba")
    assert not cluster.get(MTJ, "nba")["metadata"].get("finalizers")
    await operator.stop()  # helm uninstall: the CRD and the jobs stay, nothing handles them
    for name in ("nba", "old"):
        await cluster.request("DELETE", f"/apis/memtune.dev/v1alpha1/namespaces/{NAMESPACE}/memorytuningjobs/{name}")
    assert cluster.get(MTJ, "nba") is None and cluster.get(MTJ, "old") is None
    await operator.start()  # for the fixture's teardown


async def test_the_spec_stays_out_of_annotations(cluster: Cluster, operator: OperatorProcess) -> None:
    spec = {**SPEC, "trainer": {"env": [{"name": "WANDB_PROJECT", "value": "memory-tuning-xyz"}]}}
    await cluster.apply_job("nba", spec)
    await until(lambda: cluster.status("nba").get("phase") == "Queued")
    await cluster.patch_job("nba", {"spec": {"suspend": True}})
    await until(lambda: cluster.status("nba").get("phase") == "Suspended")
    key = "memtune.dev/last-handled-configuration"
    stored = lambda: json.loads((cluster.get(MTJ, "nba")["metadata"].get("annotations") or {}).get(key, "{}"))  # noqa: E731
    await until(lambda: stored() == {"spec": {"suspend": True}})
    text = json.dumps(cluster.get(MTJ, "nba")["metadata"]["annotations"])
    assert "memory-tuning-xyz" not in text and "s3://" not in text and "facts.jsonl" not in text


@pytest.mark.parametrize(
    ("trainer", "field"),
    [
        ({"image": "docker.io/attacker/miner:latest"}, "spec.trainer.image"),
        ({"serviceAccountName": "cluster-admin-sa"}, "spec.trainer.serviceAccountName"),
    ],
    ids=["image", "service-account"],
)
async def test_only_allowed_images_and_service_accounts(
    cluster: Cluster, operator: OperatorProcess, trainer: dict, field: str
) -> None:
    await cluster.apply_job("bad", {**SPEC, "trainer": trainer})
    status = await until(lambda: (s := cluster.status("bad")).get("phase") == "Failed" and s)
    failed = _condition(status, "Failed")
    assert failed["reason"] == "PolicyViolation" and field in failed["message"]
    assert cluster.names(PYTORCHJOBS) == [] and cluster.names(CONFIG_MAPS) == []
    # What the admin listed (tests/conftest.py: registry.local/*, service account "trainer") runs.
    await cluster.apply_job("ok", {**SPEC, "trainer": {"image": "registry.local/t:1", "serviceAccountName": "trainer"}})
    child = await until(lambda: cluster.get(PYTORCHJOBS, "ok-0"))
    pod = child["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer" and pod["containers"][0]["image"] == "registry.local/t:1"


def _scrape() -> dict[tuple[str, tuple], float]:
    port = os.environ[contract.ENV_METRICS_PORT]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_rbac_is_exactly_what_the_operator_calls_and_metrics_count_it(
    cluster: Cluster, operator_with_trainer: OperatorProcess
) -> None:
    """Three jobs, one per backend, each suspended and resumed, run, finished, and cleaned up by their TTL, plus
    a refused child: every verb the operator has is used, and nothing it is not granted (checked per request)."""
    before = _scrape()
    for backend in ("auto", "pytorchjob", "job"):
        await cluster.apply_job(backend, {**SPEC, "backend": backend, "suspend": True, "ttlSecondsAfterFinished": 0})
    resources = {"auto": TRAINJOBS, "pytorchjob": PYTORCHJOBS, "job": JOBS}
    for backend, resource in resources.items():
        await until(lambda r=resource, b=backend: cluster.get(r, f"{b}-0"))
        await cluster.patch_job(backend, {"spec": {"suspend": False}})
    running = {"auto": {"jobsStatus": [{"name": "node", "active": 1, "failed": 0, "ready": 1, "succeeded": 0,
               "suspended": 0}]}, "pytorchjob": {"conditions": [{"type": "Running", "status": "True"}]},
               "job": {"active": 1}}  # fmt: skip
    done = {"auto": "Complete", "pytorchjob": "Succeeded", "job": "Complete"}
    cluster.serve_log('MEMTUNE_PROGRESS {"step": 1, "max_steps": 2, "loss": 1.0}\n')
    for backend, resource in resources.items():
        role = "node" if backend == "auto" else "master"
        await until(lambda r=resource, b=backend: not cluster.get(r, f"{b}-0")["spec"].get("suspend", False)
                    and not cluster.get(r, f"{b}-0")["spec"].get("runPolicy", {}).get("suspend", False))  # fmt: skip
        cluster.set_child_status(resource, f"{backend}-0", running[backend])
        cluster.add_pod(f"{backend}-0", 0, role, {"phase": "Running"})
        await until(lambda b=backend: (cluster.status(b).get("progress") or {}).get("step") == 1)
        cluster.set_child_status(resource, f"{backend}-0", {"conditions": [{"type": done[backend], "status": "True"}]})
    for backend, resource in resources.items():
        await until(lambda r=resource, b=backend: cluster.get(r, f"{b}-0") is None)
    cluster.emulator.refuse = lambda request: "refused" if (request.data or {}).get("kind") == "PyTorchJob" else None
    await cluster.apply_job("refused", {**SPEC, "backend": "pytorchjob"})
    await until(lambda: cluster.status("refused").get("phase") == "Failed")

    granted = {(group, resource, verb) for (group, resource), verbs in chart_grants().items() for verb in verbs}
    serving = {grant for grant in granted if grant[1] in SERVING_RESOURCES}  # test_memory_model.py uses those
    assert cluster.emulator.used == granted - serving
    after = _scrape()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("memtune_attempts_total", backend="TrainJob") == 1
    assert delta("memtune_attempts_total", backend="PyTorchJob") == 1
    assert delta("memtune_attempts_total", backend="Job") == 1
    assert delta("memtune_reconcile_errors_total", reason="ChildRejected") == 1
    succeeded, failed = ("memtune_jobs", (("phase", "Succeeded"),)), ("memtune_jobs", (("phase", "Failed"),))
    await until(lambda: (m := _scrape()).get(succeeded) == 3 and m.get(failed) == 1)
    assert cluster.names(PODS)  # the pods the test added stay: the operator deletes children only
