"""How Flux reads a MemoryTuningJob: kstatus's rules for a custom resource, ported line for line.

Flux's kustomize-controller (`wait: true` or `healthChecks`) and `flux`'s own waits compute a resource's
status with kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status). For a kind it has no special rules for,
`Compute` applies, in order:

1. `metadata.deletionTimestamp` set → Terminating.
2. `status.observedGeneration` present and != `metadata.generation` → InProgress (LatestGenerationNotObserved).
3. a condition `Reconciling=True` → InProgress; `Stalled=True` → Failed.
4. a `Ready` condition: True → Current, False → InProgress (the README's "The Ready Condition").
5. otherwise → Current.

This module is a reading aid for tests and docs, not a replacement for kstatus.
"""

from __future__ import annotations

from typing import Any


def compute(obj: dict[str, Any]) -> tuple[str, str]:
    """`(status, message)` as kstatus would report it for a custom resource."""
    metadata, status = obj.get("metadata") or {}, obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation, observed = metadata.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        kind = obj.get("kind", "")
        return "InProgress", f"{kind} generation is {generation}, but latest observed generation is {observed}"
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition["type"] == "Reconciling" and condition["status"] == "True":
            return "InProgress", condition.get("message", "")
        if condition["type"] == "Stalled" and condition["status"] == "True":
            return "Failed", condition.get("message", "")
    for condition in conditions:
        if condition["type"] == "Ready":
            if condition["status"] == "True":
                return "Current", "Resource is Ready"
            return "InProgress", condition.get("message", "")
    return "Current", "Resource is current"
