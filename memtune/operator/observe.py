"""What the operator learns from the trainer's pods: why they failed, how far they got, what they reported.

The operator reads no Secrets and no buckets: progress comes from `MEMTUNE_PROGRESS` lines in the rank-0 pod's
log, the final result from its termination message, failures from container states.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from memtune import contract

Manifest = dict[str, Any]

# Waiting reasons that no retry fixes: the job fails at once with the reason in its condition.
_STUCK_WAITING = {
    "ErrImagePull": "ImagePullError",
    "ImagePullBackOff": "ImagePullError",
    "InvalidImageName": "ImagePullError",
    "CreateContainerConfigError": "ContainerConfigError",
}


@dataclass(frozen=True)
class PodFailure:
    reason: str
    message: str
    permanent: bool
    """True when a retry cannot help (exit code 1, image cannot be pulled, missing Secret)."""


def _container_statuses(pod: Manifest) -> list[Manifest]:
    return (pod.get("status") or {}).get("containerStatuses") or []


def diagnose(pods: list[Manifest]) -> PodFailure | None:
    """The first failure found among the attempt's pods; permanent failures win over retryable ones."""
    failures = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":
            failures.append(PodFailure("Evicted", f"pod {name} was evicted: {status.get('message', '')}", False))
        for container in _container_statuses(pod):
            state = container.get("state") or {}
            waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
            if waiting.get("reason") in _STUCK_WAITING:
                detail = waiting.get("message") or waiting["reason"]
                failures.append(PodFailure(_STUCK_WAITING[waiting["reason"]], f"pod {name}: {detail}", True))
            elif terminated and terminated.get("exitCode", 0) != 0:
                failures.append(_terminated(name, terminated))
    failures.sort(key=lambda failure: not failure.permanent)
    return failures[0] if failures else None


def _terminated(pod_name: str, terminated: Manifest) -> PodFailure:
    code = terminated.get("exitCode")
    if terminated.get("reason") == "OOMKilled":
        return PodFailure("OOMKilled", f"pod {pod_name} ran out of memory (OOMKilled, exit code {code})", False)
    detail = (terminated.get("message") or "").strip()
    message = f"pod {pod_name} exited with code {code}" + (f": {detail}" if detail else "")
    if code == contract.EXIT_PERMANENT:
        return PodFailure("TrainerError", message, True)
    return PodFailure("TrainerCrashed", message, False)


def pending_pod(pods: list[Manifest]) -> str | None:
    """Why the first of the attempt's pods still in phase Pending waits (scheduling, image pull); None if none."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        name = pod["metadata"]["name"]
        # The scheduler's verdict first ("0/4 nodes are available: ..."), then the kubelet's (ContainerCreating).
        conditions = status.get("conditions") or []
        unscheduled = [c for c in conditions if c.get("type") == "PodScheduled" and c.get("status") == "False"]
        waiting = [(c.get("state") or {}).get("waiting") or {} for c in _container_statuses(pod)]
        for blocker in (*unscheduled, *waiting):
            if detail := ": ".join(filter(None, (blocker.get("reason"), blocker.get("message")))):
                return f"pod {name} is Pending ({detail})"
        return f"pod {name} is Pending"
    return None


def master_pod(pods: list[Manifest]) -> Manifest | None:
    """The rank-0 pod of an attempt (see `contract.is_rank0_pod`), whose log and result are read."""
    for pod in pods:
        if contract.is_rank0_pod(pod["metadata"]):
            return pod
    return None


def container_of(pod: Manifest) -> str:
    """The trainer container's name in `pod`: `pytorch` (PyTorchJob, Job) or `node` (TrainJob)."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    names += [c.get("name") for c in _container_statuses(pod)]
    return next((name for name in names if name in contract.CONTAINER_NAMES), contract.CONTAINER_NAME)


def last_progress(log: str) -> dict[str, Any] | None:
    """The last well-formed `MEMTUNE_PROGRESS {...}` line of a log (a torn last line is skipped)."""
    for line in reversed(log.splitlines()):
        if not line.startswith(contract.PROGRESS_PREFIX):
            continue
        try:
            report = json.loads(line[len(contract.PROGRESS_PREFIX) :])
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict) and isinstance(report.get("step"), int):
            return report
    return None


def final_result(pod: Manifest) -> dict[str, Any]:
    """`{"artifactsUri": ..., "metrics": {...}}` from the trainer container's termination message; {} if absent."""
    for container in _container_statuses(pod):
        if container.get("name") not in contract.CONTAINER_NAMES:
            continue
        message = ((container.get("state") or {}).get("terminated") or {}).get("message") or ""
        try:
            result = json.loads(message)
        except json.JSONDecodeError:
            return {}
        return result if isinstance(result, dict) else {}
    return {}
