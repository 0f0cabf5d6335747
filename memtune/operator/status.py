"""Status conditions following Kubernetes conventions: one condition per phase, plus `Ready` and `Stalled`.

Exactly one phase condition is True at a time; `Ready` is True once Succeeded and False (with the reason)
otherwise. `Stalled` is kstatus's "abnormal-true" condition: True (with the failure's reason and message) once
Failed, so Flux reports the failure at once instead of waiting out its timeout on `Ready=False`. No `Reconciling`
condition: kstatus already reads `Ready=False` as InProgress. `lastTransitionTime` moves only when a condition's
status flips.
"""

from __future__ import annotations

from typing import Any

PHASE_CONDITIONS = ("Queued", "Pending", "Running", "Suspended", "Succeeded", "Failed")
TERMINAL_PHASES = ("Succeeded", "Failed")


def conditions_for(
    old: list[dict[str, Any]] | None, phase: str, reason: str, message: str, generation: int | None, now: str
) -> list[dict[str, Any]]:
    """The full condition list for a job entering (or staying in) `phase`."""
    previous = {condition["type"]: condition for condition in old or []}

    def condition(kind: str, status: str, why: str, text: str) -> dict[str, Any]:
        before = previous.get(kind, {})
        moved = before.get("status") != status
        return {
            "type": kind,
            "status": status,
            "reason": why,
            "message": text,
            "lastTransitionTime": now if moved else before.get("lastTransitionTime", now),
            "observedGeneration": generation,
        }

    result = [
        condition(kind, "True", reason, message) if kind == phase else condition(kind, "False", f"Not{kind}", "")
        for kind in PHASE_CONDITIONS
    ]
    ready = condition("Ready", "True" if phase == "Succeeded" else "False", reason, message)
    if phase == "Failed":
        stalled = condition("Stalled", "True", reason, message)
    else:
        stalled = condition("Stalled", "False", "NotStalled", "")
    return [*result, ready, stalled]


def phase_reason(status: dict[str, Any]) -> tuple[str | None, str | None]:
    """(phase, reason) as last written, to emit an Event only when either changes."""
    for condition in status.get("conditions") or []:
        if condition["type"] == status.get("phase") and condition["status"] == "True":
            return status.get("phase"), condition.get("reason")
    return status.get("phase"), None
