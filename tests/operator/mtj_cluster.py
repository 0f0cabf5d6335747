"""Helpers to run the real kopf operator against kmock's KubernetesEmulator on 127.0.0.1 (see conftest.py)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import kmock
from kmock._internal.k8s import KubernetesError

from .controllers import trainjob_pod
from .mtj_schemas import chart_runtime, validate_builtin, validate_pytorchjob, validate_trainjob

KUBECONFIG = Path(os.environ["KUBECONFIG"])  # set by tests/conftest.py; rewritten by each `cluster`

import kopf  # noqa: E402

import memtune.operator  # noqa: E402, F401 - registers the handlers
from memtune.spec import MemoryTuningJobStatus  # noqa: E402
from tests.chart.pod_security import restricted_violations  # noqa: E402
from tests.chart.render import render  # noqa: E402

NAMESPACE = "ml"
MTJ = kmock.resource("memtune.dev", "v1alpha1", "memorytuningjobs")
PYTORCHJOBS = kmock.resource("kubeflow.org", "v1", "pytorchjobs")
TRAINJOBS = kmock.resource("trainer.kubeflow.org", "v1alpha1", "trainjobs")
JOBS = kmock.resource("batch", "v1", "jobs")
CONFIG_MAPS = kmock.resource("", "v1", "configmaps")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
TEST_CLIENT = "X-Memtune-Test"  # marks the test's own requests (as kubectl), which RBAC does not concern
OPERATOR_AGENTS = ("kopf/", "memtune-operator")  # User-Agent prefixes of the operator's requests (kopf's, its own)


# The resources only MemoryModels use (tests/operator/test_memory_model.py checks their grants).
SERVING_RESOURCES = frozenset({"memorymodels", "memorymodels/status", "deployments", "services"})


@functools.cache
def chart_grants() -> dict[tuple[str, str], set[str]]:
    """What the chart's cluster-wide install grants the operator: (apiGroup, resource) -> verbs."""
    flat: dict[tuple[str, str], set[str]] = {}
    for role in render():
        if role["kind"] != "ClusterRole":
            continue
        for rule in role["rules"]:
            assert "resourceNames" not in rule or role["metadata"]["name"].endswith("crd-discovery")
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    flat.setdefault((group, resource), set()).update(rule["verbs"])
    return flat


def rbac_verb(request: kmock.Request) -> str:
    if request.method == "GET":
        if request.name:
            return "get"
        return "watch" if request.params.get("watch") in ("true", "1") else "list"
    verbs = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
    return next(verb for method, verb in verbs.items() if request.method == method)


@attrs.frozen
class Invalid(KubernetesError):
    """What the API server answers an object its schema, CEL rules or an admission webhook refuse."""

    status: int = 422
    reason: str = "Invalid"
    message: str = ""


class VersionedEmulator(kmock.KubernetesEmulator):
    """The emulator plus what kopf relies on: a fresh `metadata.resourceVersion` on every write, and the
    metadata a real API server sets on creation (uid, namespace, generation)."""

    _versions = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.invalid: list[str] = []  # what a real API server would have rejected; asserted empty by `cluster`
        self.used: set[tuple[str, str, str]] = set()  # (apiGroup, resource[/sub], verb) the operator called
        # A test's admission webhook: request → the message of a 422, or None to admit it.
        self.refuse: Callable[[kmock.Request], str | None] | None = None

    def _check(self, request: kmock.Request) -> None:
        """Validate every object the operator sends against the schema a real cluster would apply, and its pods
        against Pod Security "restricted", as in a namespace labelled `pod-security.kubernetes.io/enforce`; and
        every request it makes against the chart's RBAC (a real API server would answer 403)."""
        agent = request.headers.get("User-Agent", "")
        if request.resource is not None and request.resource.plural and agent.startswith(OPERATOR_AGENTS):
            resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            used = (request.resource.group or "", resource, rbac_verb(request))
            self.used.add(used)
            if used[2] not in chart_grants().get(used[:2], set()):
                self.invalid.append(f"RBAC: the chart does not grant {used} ({request.method} {request.url.path})")
        refusing = request.resource is not None and self.refuse is not None and request.method == "POST"
        if refusing and (reason := self.refuse(request)) is not None:
            raise Invalid(message=reason)
        validators = VALIDATORS.get(request.resource, ()) if request.method == "POST" else ()
        if request.resource == MTJ and request.subresource == "status":
            validators = (_validate_status,)
        for validate in validators:
            try:
                validate(request.data)
            except Exception as error:  # each validator raises its own kind; all are recorded for the teardown
                self.invalid.append(f"{request.method} {request.url.path}: {error}")

    async def _handle(self, request: kmock.Request) -> Any:
        self._check(request)
        if request.resource is not None and isinstance(request.data, dict) and request.method in ("POST", "PATCH"):
            metadata = request.data.setdefault("metadata", {})
            metadata["resourceVersion"] = str(next(self._versions))
            if request.method == "POST":  # what the API server fills in on creation
                metadata.setdefault("uid", f"uid-{metadata['resourceVersion']}")
                metadata.setdefault("generation", 1)
                metadata.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
                if request.namespace:
                    metadata.setdefault("namespace", request.namespace)
                if "name" not in metadata and "generateName" in metadata:
                    metadata["name"] = f"{metadata['generateName']}{metadata['resourceVersion']}"
        response = await super()._handle(request)
        created = request.method == "POST" and request.resource is not None and response.status == 200
        if created and not response.prepared:
            response.set_status(201)  # Created, as the API server says (the kubernetes client expects it)
        return response


def _validate_status(patch: dict[str, Any]) -> None:
    MemoryTuningJobStatus.model_validate(patch["status"])


def _admit_restricted(workload: dict[str, Any]) -> None:
    """The Pod Security admission of a "restricted" namespace, plus memtune's read-only root filesystem."""
    violations = restricted_violations(workload)
    assert violations == [], violations


def _admit_restricted_trainjob(trainjob: dict[str, Any]) -> None:
    """Pod Security on the pods a TrainJob makes with the chart's runtime."""
    pod = trainjob_pod(trainjob, chart_runtime())
    _admit_restricted({"kind": "Pod", "metadata": {"name": trainjob["metadata"]["name"]}, "spec": pod["spec"]})


Validator = Callable[[dict[str, Any]], None]
VALIDATORS: dict[kmock.resource, tuple[Validator, ...]] = {
    TRAINJOBS: (validate_trainjob, _admit_restricted_trainjob),
    PYTORCHJOBS: (validate_pytorchjob, _admit_restricted),
    JOBS: (validate_builtin, _admit_restricted),
    CONFIG_MAPS: (validate_builtin,),
}


class Cluster:
    """The emulator plus a tiny HTTP client, for a test to act as `kubectl` and as Kubeflow's controller."""

    def __init__(self, emulator: VersionedEmulator, url: str):
        self.emulator = emulator
        self.url = url.rstrip("/")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {TEST_CLIENT: "1"}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=body, headers=headers) as response,
        ):
            assert response.status < 400, await response.text()
            return await response.json()

    async def apply_job(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "memtune.dev/v1alpha1", "kind": "MemoryTuningJob", "metadata": {"name": name}}
        await self.request(
            "POST", f"/apis/memtune.dev/v1alpha1/namespaces/{NAMESPACE}/memorytuningjobs", {**body, "spec": spec}
        )

    async def patch_job(self, name: str, patch: dict[str, Any]) -> None:
        await self.request("PATCH", f"/apis/memtune.dev/v1alpha1/namespaces/{NAMESPACE}/memorytuningjobs/{name}", patch)

    def get(self, resource: kmock.resource, name: str) -> dict[str, Any] | None:
        key = (resource, NAMESPACE, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return self.emulator.objects[key].raw

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(MTJ, name) or {}).get("status") or {}

    def names(self, resource: kmock.resource) -> list[str]:
        return sorted(
            name for (res, _, name), obj in self.emulator.objects.items() if res == resource and not obj.deleted
        )

    def set_child_status(self, resource: kmock.resource, name: str, status: dict[str, Any]) -> None:
        """Act as Kubeflow's (or the Job) controller: the operator polls children, so no watch event is needed."""
        self.emulator.objects[resource, NAMESPACE, name].patch({"status": status})

    def add_pod(self, child: str, attempt: int, role: str, status: dict[str, Any], index: int = 0) -> None:
        """A pod of `child` as its controller would make it (a TrainJob's: role `node`, a completion index)."""
        job = child.rsplit("-", 1)[0]
        labels = {"memtune.dev/job": job, "memtune.dev/attempt": str(attempt), "memtune.dev/role": role}
        name = f"{child}-{role}-{index}"
        if role == "node":
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            name = f"{child}-node-0-{index}"
        pod = {"metadata": {"name": name, "namespace": NAMESPACE, "labels": labels}, "status": status}
        self.emulator.objects[PODS, NAMESPACE, pod["metadata"]["name"]] = pod

    def serve_log(self, text: str) -> None:
        """Every pod log read returns `text` from now on (the emulator keeps no logs of its own)."""
        first = not hasattr(self, "_log")
        self._log = text.encode()
        if first:
            plain = kmock.headers({"Content-Type": "text/plain; charset=utf-8"})
            self.emulator["get", PODS, kmock.subresource("log")] << plain << (lambda: self._log)

    def events(self) -> list[dict[str, Any]]:
        """Events as the operator posted them (recorded requests, not stored state)."""
        return [request.data for request in self.emulator if request.resource == EVENTS and request.method == "POST"]

    def requests_to(self, resource: kmock.resource, method: str) -> list[kmock.Request]:
        return [request for request in self.emulator if request.resource == resource and request.method == method]


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until `predicate()` is truthy; fail with its last value after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting; last value: {value!r}")
        await asyncio.sleep(0.05)


def install_crd(emulator: VersionedEmulator, crd: dict[str, Any]) -> None:
    """Store a CRD object (the operator discovers Kubeflow by reading its CRD)."""
    crd["metadata"]["resourceVersion"] = str(next(emulator._versions))
    emulator.objects[CRDS, None, crd["metadata"]["name"]] = crd


def declare_resources(emulator: VersionedEmulator) -> None:
    emulator.resources.load_bundled()  # built-in kinds, as discovered from a real (k3s) cluster
    emulator.resources[MTJ] = kmock.ResourceInfo(
        kind="MemoryTuningJob", singular="memorytuningjob", namespaced=True, shortnames={"mtj"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, subresources={"status"},
    )  # fmt: skip
    emulator.resources[PYTORCHJOBS] = kmock.ResourceInfo(
        kind="PyTorchJob", singular="pytorchjob", namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"}, subresources={"status"},
    )  # fmt: skip
    emulator.resources[TRAINJOBS] = kmock.ResourceInfo(
        kind="TrainJob", singular="trainjob", namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"}, subresources={"status"},
    )  # fmt: skip


def _watch_count(cluster: Cluster) -> int:
    return sum(1 for request in cluster.emulator if request.resource == MTJ and request.params.get("watch") == "true")


class OperatorProcess:
    """kopf.operator() in its own thread and event loop, as `kopf run` would run it; stop() + start() = a restart.

    Its own loop because kopf, when stopping, cancels every task its loop gained after it started, and here
    the emulator's request handlers and the test's own fixtures would be among them.
    """

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()

    async def start(self) -> None:
        self.stop_flag, ready = threading.Event(), threading.Event()
        operator = kopf.operator(standalone=True, clusterwide=True, stop_flag=self.stop_flag, ready_flag=ready)
        watches = _watch_count(self.cluster)
        self.thread = threading.Thread(target=asyncio.run, args=(operator,), name="kopf", daemon=True)
        self.thread.start()
        await until(ready.is_set)
        # Create objects only once kopf's watch is open, or their ADDED events are lost.
        await until(lambda: _watch_count(self.cluster) > watches)

    async def stop(self) -> None:
        assert self.thread is not None
        self.stop_flag.set()
        await until(lambda: not self.thread.is_alive(), timeout=20)
