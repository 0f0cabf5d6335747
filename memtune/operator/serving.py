"""kopf handlers for MemoryModel: keep a Deployment and a Service serving a job's output, and report readiness.

One idempotent pass per trigger (create, resume, spec change, the periodic resync):

    source.jobRef -> the job's spec.output.uri, once the job has Succeeded (before that: Pending, nothing created)
    Deployment + Service: created if missing (owned by the MemoryModel), the Deployment patched to the desired spec
    status: Ready once at least one pod passes /readyz (the memory verified and loaded), else Pending

A spec the operator cannot use (say both jobRef and uri, which the CRD also refuses) gets phase Failed with the
field named; nothing is created for it.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from memtune import spec as job_spec
from memtune.operator.backends import Resource
from memtune.operator.handlers import SETTINGS
from memtune.operator.kube import Kube
from memtune.serving import resource as mm

MEMORY_MODELS = (job_spec.API_GROUP, job_spec.API_VERSION, mm.PLURAL)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
SERVICES = Resource("", "v1", "services", "Service")
JOBS = Resource(job_spec.API_GROUP, job_spec.API_VERSION, job_spec.PLURAL, job_spec.KIND)


def _owner(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": f"{job_spec.API_GROUP}/{job_spec.API_VERSION}", "kind": mm.KIND, "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip


def _source_uri(kube: Kube, namespace: str, source: mm.ModelSource) -> tuple[str | None, str]:
    """(uri to serve, or None while waiting; why)."""
    if source.uri is not None:
        return source.uri, f"serving {source.uri}"
    job = kube.get(JOBS, namespace, source.jobRef or "")
    if job is None:
        return None, f"waiting for MemoryTuningJob {source.jobRef!r} (not found)"
    phase = (job.get("status") or {}).get("phase")
    if phase != "Succeeded":
        return None, f"waiting for MemoryTuningJob {source.jobRef!r} to succeed (phase {phase or 'none yet'})"
    return job["spec"]["output"]["uri"], f"serving the output of MemoryTuningJob {source.jobRef!r}"


def reconcile_model(kube: Kube, body: dict[str, Any]) -> dict[str, Any]:
    """One pass; returns the status to write."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    status: dict[str, Any] = {"observedGeneration": meta.get("generation")}
    try:
        spec = mm.parse_model_spec(body.get("spec"))
    except job_spec.SpecError as error:
        return {**status, "phase": "Failed", "message": str(error)}
    uri, message = _source_uri(kube, namespace, spec.source)
    if uri is None:
        return {**status, "phase": "Pending", "message": message, "readyReplicas": 0, "replicas": spec.replicas}
    owner = [_owner(body)]
    image = spec.image or SETTINGS.trainer_image
    desired = mm.deployment(name, namespace, spec, uri, image=image, storage_secret=SETTINGS.storage_secret)
    desired["metadata"]["ownerReferences"] = owner
    service = mm.service(name, namespace)
    service["metadata"]["ownerReferences"] = owner
    if not kube.create(DEPLOYMENTS, namespace, desired):
        kube.patch(DEPLOYMENTS, namespace, name, {"spec": desired["spec"]})
    kube.create(SERVICES, namespace, service)
    current = kube.get(DEPLOYMENTS, namespace, name) or {}
    ready = int((current.get("status") or {}).get("readyReplicas") or 0)
    phase = "Ready" if ready >= 1 else "Pending"
    if phase == "Pending":
        message = f"{message}; 0/{spec.replicas} pods ready (each verifies and loads the memory first)"
    return {**status, "phase": phase, "message": message, "sourceUri": uri, "replicas": spec.replicas,
            "readyReplicas": ready, "url": mm.service_url(name, namespace)}  # fmt: skip


@kopf.on.resume(*MEMORY_MODELS)
@kopf.on.create(*MEMORY_MODELS)
@kopf.on.update(*MEMORY_MODELS, field="spec")
@kopf.timer(*MEMORY_MODELS, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Never raises for a bad resource (it gets Failed), only for API errors (kopf retries)."""
    with memo.locks[body.metadata.uid]:
        status = reconcile_model(memo.kube, dict(body))
    previous = body.get("status") or {}
    if (previous.get("phase"), previous.get("message")) != (status.get("phase"), status.get("message")):
        logger.info("%s: %s", status["phase"], status["message"])
    if {key: previous.get(key) for key in status} != status:  # no write when nothing changed
        patch["status"] = status
