"""The trainer pod and the ConfigMap carrying its spec: shared by every backend.

The pod runs `python -m memtune.trainer --spec /etc/memtune/job.yaml` (see `memtune.contract`); the spec file
is the whole MemoryTuningJob, so the trainer validates exactly what the user wrote. Every pod meets Pod Security
"restricted" with a read-only root filesystem (`memtune.operator.podsecurity`).
"""

from __future__ import annotations

from typing import Any

import yaml

from memtune import contract
from memtune.operator import podsecurity
from memtune.operator.settings import OperatorSettings
from memtune.spec import MemoryTuningJob

Manifest = dict[str, Any]
_SPEC_VOLUME = "memtune-spec"
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


def spec_config_map(job: MemoryTuningJob, attempt: int, owner: Manifest) -> Manifest:
    name = contract.spec_config_map_name(job.metadata.name, attempt)
    document = job.model_dump(mode="json", exclude_none=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(job, attempt, owner, name),
        "data": {contract.SPEC_FILE_NAME: yaml.safe_dump(document, sort_keys=False)},
    }


def _resources(job: MemoryTuningJob) -> Manifest:
    resources = {key: dict(value) for key, value in (job.spec.trainer.resources or {}).items()}
    gpus = job.spec.gpuConfig.gpus
    if gpus:  # a GPU count is a limit (requests default to it); none at all for CPU training
        resources.setdefault("limits", {})[GPU_RESOURCE] = gpus
    return resources


def _env(job: MemoryTuningJob, attempt: int) -> list[Manifest]:
    env = [
        {"name": contract.ENV_JOB_NAME, "value": job.metadata.name},
        {"name": contract.ENV_ATTEMPT, "value": str(attempt)},
        *podsecurity.writable_env(),
    ]
    return env + [item.model_dump(mode="json", exclude_none=True) for item in job.spec.trainer.env or []]


def storage_secret(job: MemoryTuningJob, settings: OperatorSettings) -> str | None:
    ref = job.spec.storage.secretRef
    return ref.name if ref is not None else settings.storage_secret


def pod_template(job: MemoryTuningJob, attempt: int, settings: OperatorSettings, role: str) -> Manifest:
    """One pod of the attempt; `role` (master/worker) marks the rank-0 pod whose log and result are read."""
    trainer = job.spec.trainer
    writable = podsecurity.writable_dirs(job.spec.gpuConfig.gpus)
    container: Manifest = {
        "name": contract.CONTAINER_NAME,
        "image": trainer.image or settings.trainer_image,
        "command": list(contract.TRAINER_COMMAND),
        "env": _env(job, attempt),
        "volumeMounts": [
            {"name": _SPEC_VOLUME, "mountPath": contract.SPEC_MOUNT_DIR, "readOnly": True},
            *podsecurity.volume_mounts(writable),
        ],
        "terminationMessagePath": contract.TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": podsecurity.container_security_context(),
    }
    secret = storage_secret(job, settings)
    if secret:  # credentials only by reference: the operator never reads the Secret
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    if resources := _resources(job):
        container["resources"] = resources

    pod_spec: Manifest = {
        "restartPolicy": "Never",  # retries are new attempts, counted by the operator against backoffLimit
        "securityContext": podsecurity.pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": _SPEC_VOLUME, "configMap": {"name": contract.spec_config_map_name(job.metadata.name, attempt)}},
            *podsecurity.volumes(writable),
        ],
    }
    placement = {
        "nodeSelector": trainer.nodeSelector,
        "tolerations": trainer.tolerations,
        "affinity": trainer.affinity,
        "priorityClassName": trainer.priorityClassName,
        "serviceAccountName": trainer.serviceAccountName,
        "imagePullSecrets": [ref.model_dump() for ref in trainer.imagePullSecrets or []] or None,
    }
    pod_spec.update({key: value for key, value in placement.items() if value is not None})
    return {"metadata": {"labels": {**labels(job, attempt), contract.ROLE_LABEL: role}}, "spec": pod_spec}
