"""The trainer pod and the ConfigMap carrying its spec: shared by every backend.

The pod runs `python -m memtune.trainer --spec /etc/memtune/job.yaml` (see `memtune.contract`); the spec file
is the whole MemoryTuningJob, so the trainer validates exactly what the user wrote. Every pod meets Pod Security
"restricted" with a read-only root filesystem (`memtune.operator.podsecurity`). The PyTorchJob and Job backends
send the whole pod template; a TrainJob sends only its parts (`image`, `env`, `resources`, `placement`), the rest
being the chart's ClusterTrainingRuntime.
"""

from __future__ import annotations

from typing import Any

import yaml

from memtune import contract
from memtune.operator import podsecurity
from memtune.operator.settings import OperatorSettings
from memtune.spec import MemoryTuningJob

Manifest = dict[str, Any]
SPEC_VOLUME = "memtune-spec"
GPU_RESOURCE = "nvidia.com/gpu"


def labels(job: MemoryTuningJob, attempt: int) -> dict[str, str]:
    """Labels of every child object and pod of one attempt (also how the operator finds the pods)."""
    found = {contract.JOB_LABEL: job.metadata.name, contract.ATTEMPT_LABEL: str(attempt)}
    if job.spec.queueName:
        found[contract.QUEUE_LABEL] = job.spec.queueName
    return found


def owner_reference(owner: Manifest) -> Manifest:
    """Children are garbage-collected with their MemoryTuningJob."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(job: MemoryTuningJob, attempt: int, owner: Manifest, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels(job, attempt),
        "ownerReferences": [owner_reference(owner)],
    }


def spec_config_map(job: MemoryTuningJob, attempt: int, owner: Manifest, backend_kind: str) -> Manifest:
    """The attempt's spec; its `BACKEND_LABEL` records the child's kind before the child exists (one child per
    attempt, whatever the operator learns about installed CRDs later)."""
    name = contract.spec_config_map_name(job.metadata.name, attempt)
    document = job.model_dump(mode="json", exclude_none=True)
    metadata = child_metadata(job, attempt, owner, name)
    metadata["labels"][contract.BACKEND_LABEL] = backend_kind
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {contract.SPEC_FILE_NAME: yaml.safe_dump(document, sort_keys=False)},
    }


def spec_volume(job: MemoryTuningJob, attempt: int) -> Manifest:
    return {"name": SPEC_VOLUME, "configMap": {"name": contract.spec_config_map_name(job.metadata.name, attempt)}}


def image(job: MemoryTuningJob, settings: OperatorSettings) -> str:
    return job.spec.trainer.image or settings.trainer_image


def resources(job: MemoryTuningJob) -> Manifest:
    resources = {key: dict(value) for key, value in (job.spec.trainer.resources or {}).items()}
    gpus = job.spec.gpuConfig.gpus
    if gpus:  # a GPU count is a limit (requests default to it); none at all for CPU training
        resources.setdefault("limits", {})[GPU_RESOURCE] = gpus
    return resources


def env(job: MemoryTuningJob, attempt: int) -> list[Manifest]:
    """The trainer's environment: the operator's variables, then the job's own (which may override them)."""
    env = [
        {"name": contract.ENV_JOB_NAME, "value": job.metadata.name},
        {"name": contract.ENV_ATTEMPT, "value": str(attempt)},
        *podsecurity.writable_env(),
    ]
    return env + [item.model_dump(mode="json", exclude_none=True) for item in job.spec.trainer.env or []]


def storage_secret(job: MemoryTuningJob, settings: OperatorSettings) -> str | None:
    ref = job.spec.storage.secretRef
    return ref.name if ref is not None else settings.storage_secret


def secret_key_env(secret: str) -> list[Manifest]:
    """The storage Secret's keys one by one (for TrainJobs, which cannot carry envFrom)."""
    return [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {
                    "name": secret,
                    "key": key,
                    **({} if key in contract.STORAGE_SECRET_REQUIRED_KEYS else {"optional": True}),
                }
            },
        }
        for key in contract.STORAGE_SECRET_KEYS
    ]


def placement(job: MemoryTuningJob, settings: OperatorSettings) -> Manifest:
    """Where the pods go and as whom: the pod-spec fields a job may set (service account: see `policy`)."""
    trainer = job.spec.trainer
    fields = {
        "nodeSelector": trainer.nodeSelector,
        "tolerations": trainer.tolerations,
        "affinity": trainer.affinity,
        "priorityClassName": trainer.priorityClassName,
        "serviceAccountName": trainer.serviceAccountName or settings.trainer_service_account,
        "imagePullSecrets": [ref.model_dump() for ref in trainer.imagePullSecrets or []] or None,
    }
    return {key: value for key, value in fields.items() if value is not None}


def pod_template(
    job: MemoryTuningJob,
    attempt: int,
    settings: OperatorSettings,
    role: str,
    extra_env: list[Manifest] | None = None,
) -> Manifest:
    """One pod of the attempt; `role` (master/worker) marks the rank-0 pod whose log and result are read;
    `extra_env` comes before the job's own variables (a controller's part that no controller sets)."""
    writable = podsecurity.writable_dirs(job.spec.gpuConfig.gpus)
    variables = env(job, attempt)
    if extra_env:
        position = len(variables) - len(job.spec.trainer.env or [])
        variables[position:position] = extra_env
    container: Manifest = {
        "name": contract.CONTAINER_NAME,
        "image": image(job, settings),
        "command": list(contract.TRAINER_COMMAND),
        "env": variables,
        "volumeMounts": [
            {"name": SPEC_VOLUME, "mountPath": contract.SPEC_MOUNT_DIR, "readOnly": True},
            *podsecurity.volume_mounts(writable),
        ],
        "terminationMessagePath": contract.TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": podsecurity.container_security_context(),
    }
    secret = storage_secret(job, settings)
    if secret:  # credentials only by reference: the operator never reads the Secret
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    if needs := resources(job):
        container["resources"] = needs

    pod_spec: Manifest = {
        "restartPolicy": "Never",  # retries are new attempts, counted by the operator against backoffLimit
        "securityContext": podsecurity.pod_security_context(),
        "containers": [container],
        "volumes": [spec_volume(job, attempt), *podsecurity.volumes(writable)],
    }
    pod_spec.update(placement(job, settings))
    return {"metadata": {"labels": {**labels(job, attempt), contract.ROLE_LABEL: role}}, "spec": pod_spec}
