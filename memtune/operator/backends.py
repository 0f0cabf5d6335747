"""Backends: which Kubernetes workload runs one attempt. One class per kind, one interface for the reconciler.

`PyTorchJobBackend` (Kubeflow Training Operator, kubeflow.org/v1) runs any number of nodes; `BatchJobBackend`
(batch/v1 Job) runs single-node jobs on clusters without Kubeflow. A Kubeflow Trainer v2 `TrainJob` backend
would be a third class with the same members.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Protocol

from memtune import contract
from memtune.operator import pods
from memtune.operator.settings import OperatorSettings
from memtune.spec import MemoryTuningJob

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


class ChildPhase(Enum):
    PENDING = "Pending"
    SUSPENDED = "Suspended"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class ChildState:
    phase: ChildPhase
    message: str = ""


class Backend(Protocol):
    resource: ClassVar[Resource]

    def build(self, job: MemoryTuningJob, attempt: int, owner: Manifest, settings: OperatorSettings) -> Manifest:
        """The child object of one attempt, named `{job}-{attempt}`."""

    def suspend_patch(self, suspend: bool) -> Manifest:
        """Merge patch that holds or releases the child's pods."""

    def is_suspended(self, child: Manifest) -> bool: ...

    def state(self, child: Manifest) -> ChildState:
        """Where the child stands, read from its status."""


def _true_conditions(child: Manifest) -> dict[str, str]:
    """Condition type → message, for the conditions that are True."""
    conditions = (child.get("status") or {}).get("conditions") or []
    return {c["type"]: c.get("message", "") for c in conditions if c.get("status") == "True"}


class PyTorchJobBackend:
    resource = Resource("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")

    def build(self, job: MemoryTuningJob, attempt: int, owner: Manifest, settings: OperatorSettings) -> Manifest:
        name = contract.child_name(job.metadata.name, attempt)
        gpu = job.spec.gpuConfig

        def replica(count: int, role: str) -> Manifest:
            template = pods.pod_template(job, attempt, settings, role)
            return {"replicas": count, "restartPolicy": "Never", "template": template}

        replicas = {"Master": replica(1, contract.ROLE_MASTER)}
        if gpu.nodes > 1:  # Kubeflow's admission webhook rejects a Worker key on single-node jobs
            replicas["Worker"] = replica(gpu.nodes - 1, contract.ROLE_WORKER)
        return {
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": pods.child_metadata(job, attempt, owner, name),
            "spec": {
                # backoffLimit 0: a failed attempt fails the PyTorchJob; the operator counts retries itself.
                "runPolicy": {"suspend": job.spec.suspend, "backoffLimit": 0, "cleanPodPolicy": "None"},
                "nprocPerNode": str(max(gpu.gpus, 1)),
                "pytorchReplicaSpecs": replicas,
            },
        }

    def suspend_patch(self, suspend: bool) -> Manifest:
        return {"spec": {"runPolicy": {"suspend": suspend}}}

    def is_suspended(self, child: Manifest) -> bool:
        return bool(child.get("spec", {}).get("runPolicy", {}).get("suspend", False))

    def state(self, child: Manifest) -> ChildState:
        true = _true_conditions(child)
        for kind, phase in (
            ("Succeeded", ChildPhase.SUCCEEDED),
            ("Failed", ChildPhase.FAILED),
            ("Suspended", ChildPhase.SUSPENDED),
            ("Running", ChildPhase.RUNNING),
        ):
            if kind in true:
                return ChildState(phase, true[kind])
        return ChildState(ChildPhase.PENDING)


class BatchJobBackend:
    resource = Resource("batch", "v1", "jobs", "Job")

    def build(self, job: MemoryTuningJob, attempt: int, owner: Manifest, settings: OperatorSettings) -> Manifest:
        name = contract.child_name(job.metadata.name, attempt)
        return {
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": pods.child_metadata(job, attempt, owner, name),
            "spec": {
                "suspend": job.spec.suspend,
                "backoffLimit": 0,  # the operator counts retries itself
                "completions": 1,
                "parallelism": 1,
                "template": pods.pod_template(job, attempt, settings, contract.ROLE_MASTER),
            },
        }

    def suspend_patch(self, suspend: bool) -> Manifest:
        return {"spec": {"suspend": suspend}}

    def is_suspended(self, child: Manifest) -> bool:
        return bool(child.get("spec", {}).get("suspend", False))

    def state(self, child: Manifest) -> ChildState:
        true = _true_conditions(child)
        if "Complete" in true:
            return ChildState(ChildPhase.SUCCEEDED, true["Complete"])
        if "Failed" in true:
            return ChildState(ChildPhase.FAILED, true["Failed"])
        if "Suspended" in true:
            return ChildState(ChildPhase.SUSPENDED, true["Suspended"])
        if (child.get("status") or {}).get("active"):
            return ChildState(ChildPhase.RUNNING)
        return ChildState(ChildPhase.PENDING)


BACKENDS: dict[str, Backend] = {"pytorchjob": PyTorchJobBackend(), "job": BatchJobBackend()}


def choose_backend(job: MemoryTuningJob, kubeflow_installed: bool) -> Backend:
    """`spec.backend`, or for `auto` a PyTorchJob where Kubeflow is installed and a plain Job elsewhere."""
    name = job.spec.backend
    if name == "auto":
        name = "pytorchjob" if kubeflow_installed else "job"
    if name == "job" and job.spec.gpuConfig.nodes > 1:
        raise ValueError(
            f"spec.gpuConfig.nodes is {job.spec.gpuConfig.nodes} but Kubeflow's PyTorchJob is not installed on this"
            " cluster and a batch/v1 Job runs one node: install the Kubeflow Training Operator or set nodes to 1"
        )
    return BACKENDS[name]
