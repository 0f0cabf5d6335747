"""MemoryTuningJob objects as a cluster would hold them, one per life stage, for the GitOps health checks.

Conditions come from the operator's own `conditions_for`, and each status is validated against
`memtune.spec.MemoryTuningJobStatus`, so the samples cannot drift from what the operator writes.
"""

from __future__ import annotations

from typing import Any

from memtune.operator.status import conditions_for
from memtune.spec import MemoryTuningJobStatus

_TIME = "2026-01-01T00:00:00Z"


def status_for(phase: str, reason: str, message: str = "", generation: int = 1, **extra: Any) -> dict[str, Any]:
    """The status the operator writes for a job in `phase`, as observed at `generation`."""
    conditions = conditions_for(None, phase, reason, message, generation, _TIME)
    return {"phase": phase, "observedGeneration": generation, "conditions": conditions, **extra}


def job(status: dict[str, Any] | None, generation: int = 1, suspend: bool = False) -> dict[str, Any]:
    """A MemoryTuningJob at `generation` holding `status` (None: the operator has not written one yet)."""
    obj: dict[str, Any] = {
        "apiVersion": "memtune.dev/v1alpha1",
        "kind": "MemoryTuningJob",
        "metadata": {"name": "facts", "namespace": "team-a", "generation": generation},
        "spec": {"dataset": {"uri": "s3://bucket/facts.jsonl"}, "output": {"uri": "s3://bucket/runs"}},
    }
    if suspend:
        obj["spec"]["suspend"] = True
    if status is not None:
        MemoryTuningJobStatus.model_validate(status)
        obj["status"] = status
    return obj


# name -> (object, Argo CD health status, Flux kstatus status)
SAMPLES: dict[str, tuple[dict[str, Any], str, str]] = {
    # No status yet: kstatus cannot tell a job that uses Ready from one that never will, so it says Current.
    "new": (job(None), "Progressing", "Current"),
    "pending": (
        job(status_for("Pending", "PodsStarting", "facts-0: pod facts-0-master-0 is Pending (ContainerCreating)")),
        "Progressing",
        "InProgress",
    ),
    "queued": (job(status_for("Queued", "WaitingForCapacity", "kueue queue team-a")), "Progressing", "InProgress"),
    "running": (
        job(status_for("Running", "Training", "step 10/100", attempt=0, progress={"step": 10, "maxSteps": 100})),
        "Progressing",
        "InProgress",
    ),
    "suspended": (
        job(status_for("Suspended", "Suspended", generation=2), generation=2, suspend=True),
        "Suspended",
        "InProgress",
    ),
    "succeeded": (
        job(
            status_for(
                "Succeeded",
                "Completed",
                "recall 1.000",
                artifactsUri="s3://bucket/runs/runs/20260101-000000-ab12",
                metrics={"recall": 1.0},
            )
        ),
        "Healthy",
        "Current",
    ),
    # The operator sets Stalled=True beside Failed=True, so kstatus reports the failure at once.
    "failed": (
        job(status_for("Failed", "InvalidDataset", "dataset line 3: missing 'output'")),
        "Degraded",
        "Failed",
    ),
    # `suspend` was set on a running job (generation 2) but the status still describes generation 1: the
    # health checks must wait for the operator rather than trust the old phase.
    "stale": (
        job(status_for("Running", "Training", generation=1), generation=2, suspend=True),
        "Progressing",
        "InProgress",
    ),
}
