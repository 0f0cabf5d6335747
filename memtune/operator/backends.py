"""Backends: which Kubernetes workload runs one attempt. One class per kind, one interface for the reconciler.

`TrainJobBackend` (Kubeflow Trainer v2, trainer.kubeflow.org/v1alpha1) and `PyTorchJobBackend` (Kubeflow
Training Operator v1, kubeflow.org/v1, maintained for fixes only) run any number of nodes; `BatchJobBackend`
(batch/v1 Job) runs single-node jobs on clusters without Kubeflow. `choose_backend` picks one per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Protocol

from memtune import contract
from memtune.operator import pods, podsecurity
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

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


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
    multi_node: ClassVar[bool]

    def build(self, job: MemoryTuningJob, attempt: int, owner: Manifest, settings: OperatorSettings) -> Manifest:
        """The child object of one attempt, named `{job}-{attempt}`."""

    def unsupported(self, job: MemoryTuningJob) -> list[str]:
        """Fields of `job` this kind cannot carry (the job then fails naming them, or `auto` picks another)."""

    def suspend_patch(self, suspend: bool) -> Manifest:
        """Merge patch that holds or releases the child's pods."""

    def is_suspended(self, child: Manifest) -> bool: ...

    def state(self, child: Manifest) -> ChildState:
        """Where the child stands, read from its status."""


def _true_conditions(child: Manifest) -> dict[str, str]:
    """Condition type → message, for the conditions that are True."""
    conditions = (child.get("status") or {}).get("conditions") or []
    return {c["type"]: c.get("message", "") for c in conditions if c.get("status") == "True"}


def _held(job: MemoryTuningJob) -> bool:
    """Create the child suspended when the job says so, or when Kueue is to admit it (admission = unsuspend)."""
    return job.spec.suspend or job.spec.queueName is not None


class TrainJobBackend:
    """A TrainJob naming the chart's ClusterTrainingRuntime (`memtune-torch`): the runtime holds the pod's
    security, writable emptyDirs and the spec's mount; the TrainJob adds the image, command, environment,
    resources, the attempt's spec volume, labels and placement (`runtimePatches`)."""

    resource = Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
    multi_node = True
    # runtimePatches is keyed by manager; Trainer's own webhook writes other entries.
    PATCH_MANAGER = "memtune.dev/operator"
    REPLICATED_JOB = "node"  # the runtime's replicated job (and Trainer's name for the torch trainer)

    def build(self, job: MemoryTuningJob, attempt: int, owner: Manifest, settings: OperatorSettings) -> Manifest:
        name = contract.child_name(job.metadata.name, attempt)
        gpu = job.spec.gpuConfig
        env = pods.env(job, attempt)
        secret = pods.storage_secret(job, settings)
        if secret:  # before the job's own variables, which may override them
            position = len(env) - len(job.spec.trainer.env or [])
            env[position:position] = pods.secret_key_env(secret)
        trainer: Manifest = {
            "image": pods.image(job, settings),
            "command": list(contract.TRAINER_COMMAND),
            "env": env,
            "numNodes": gpu.nodes,
            "numProcPerNode": max(gpu.gpus, 1),
        }
        if needs := pods.resources(job):
            trainer["resourcesPerNode"] = needs
        # /dev/shm for GPU jobs only, as on the other backends; /tmp and /scratch are the runtime's.
        extra = [d for d in podsecurity.writable_dirs(gpu.gpus) if d not in podsecurity.writable_dirs(0)]
        pod_patch: Manifest = {
            "volumes": [pods.spec_volume(job, attempt), *podsecurity.volumes(extra)],
            **pods.placement(job, settings),
        }
        if extra:
            pod_patch["containers"] = [
                {"name": contract.TRAINJOB_CONTAINER_NAME, "volumeMounts": podsecurity.volume_mounts(extra)}
            ]
        pod_labels = {**pods.labels(job, attempt), contract.ROLE_LABEL: contract.ROLE_NODE}
        replicated = {
            "name": self.REPLICATED_JOB,
            "template": {"spec": {"template": {"metadata": {"labels": pod_labels}, "spec": pod_patch}}},
        }
        return {
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": pods.child_metadata(job, attempt, owner, name),
            "spec": {
                "runtimeRef": {
                    "apiGroup": self.resource.group,
                    "kind": "ClusterTrainingRuntime",
                    "name": settings.trainjob_runtime,
                },
                "suspend": _held(job),
                "trainer": trainer,
                "runtimePatches": [
                    {
                        "manager": self.PATCH_MANAGER,
                        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}},
                    }
                ],
            },
        }

    def unsupported(self, job: MemoryTuningJob) -> list[str]:
        # A runtime patch may not set a priority class; Kueue's WorkloadPriorityClass label is the TrainJob way.
        return ["spec.trainer.priorityClassName"] if job.spec.trainer.priorityClassName else []

    def suspend_patch(self, suspend: bool) -> Manifest:
        return {"spec": {"suspend": suspend}}

    def is_suspended(self, child: Manifest) -> bool:
        return bool(child.get("spec", {}).get("suspend", False))

    def state(self, child: Manifest) -> ChildState:
        true = _true_conditions(child)
        for kind, phase in (
            ("Complete", ChildPhase.SUCCEEDED),
            ("Failed", ChildPhase.FAILED),
            ("Suspended", ChildPhase.SUSPENDED),
        ):
            if kind in true:
                return ChildState(phase, true[kind])
        jobs = (child.get("status") or {}).get("jobsStatus") or []
        if any(entry.get("active") for entry in jobs):
            return ChildState(ChildPhase.RUNNING)
        return ChildState(ChildPhase.PENDING)


class PyTorchJobBackend:
    resource = Resource("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
    multi_node = True

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
                "runPolicy": {"suspend": _held(job), "backoffLimit": 0, "cleanPodPolicy": "None"},
                # Kubeflow sets PET_NPROC_PER_NODE from it; the pod starts that many ranks (trainer pod.py).
                "nprocPerNode": str(max(gpu.gpus, 1)),
                "pytorchReplicaSpecs": replicas,
            },
        }

    def unsupported(self, job: MemoryTuningJob) -> list[str]:
        return []

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
    multi_node = False

    def build(self, job: MemoryTuningJob, attempt: int, owner: Manifest, settings: OperatorSettings) -> Manifest:
        name = contract.child_name(job.metadata.name, attempt)
        # No controller tells a Job's pod how many ranks to start: the operator does, in torchrun's variables.
        ranks = [
            {"name": "PET_NNODES", "value": "1"},
            {"name": "PET_NPROC_PER_NODE", "value": str(max(job.spec.gpuConfig.gpus, 1))},
        ]
        return {
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": pods.child_metadata(job, attempt, owner, name),
            "spec": {
                "suspend": _held(job),
                "backoffLimit": 0,  # the operator counts retries itself
                "completions": 1,
                "parallelism": 1,
                "template": pods.pod_template(job, attempt, settings, contract.ROLE_MASTER, extra_env=ranks),
            },
        }

    def unsupported(self, job: MemoryTuningJob) -> list[str]:
        return ["spec.gpuConfig.nodes"] if job.spec.gpuConfig.nodes > 1 else []

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


BACKENDS: dict[str, Backend] = {
    "trainjob": TrainJobBackend(),
    "pytorchjob": PyTorchJobBackend(),
    "job": BatchJobBackend(),
}
BY_KIND: dict[str, Backend] = {backend.resource.kind: backend for backend in BACKENDS.values()}


class BackendError(ValueError):
    """No backend can run the job here; `reason` is the condition reason."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def choose_backend(job: MemoryTuningJob, installed: set[str]) -> Backend:
    """`spec.backend`, or for `auto` the first of TrainJob, PyTorchJob, Job whose CRD is in `installed` (CRD
    names; a Job needs none) and that can carry the job. Raises BackendError saying why none can."""
    name = job.spec.backend
    if name != "auto":
        backend = BACKENDS[name]
        if fields := backend.unsupported(job):
            raise BackendError("UnsupportedByBackend", f"{backend.resource.kind} cannot carry {', '.join(fields)}")
        return backend
    for backend in BACKENDS.values():
        available = backend.resource.group == "batch" or backend.resource.crd_name in installed
        if available and not backend.unsupported(job):
            return backend
    kinds = [backend.resource.kind for backend in BACKENDS.values() if backend.resource.crd_name in installed]
    if job.spec.gpuConfig.nodes > 1 and not kinds:
        raise BackendError(
            "KubeflowMissing",
            f"spec.gpuConfig.nodes is {job.spec.gpuConfig.nodes} but neither Kubeflow Trainer's TrainJob nor Kubeflow's"
            " PyTorchJob is installed on this cluster and a batch/v1 Job runs one node: install Kubeflow Trainer or"
            " set nodes to 1",
        )
    blocked = {backend.resource.kind: backend.unsupported(job) for backend in BACKENDS.values()}
    detail = "; ".join(f"{kind} cannot carry {', '.join(fields)}" for kind, fields in blocked.items() if fields)
    raise BackendError("UnsupportedByBackend", f"no installed backend can run this job: {detail}")
