"""Prometheus metrics of the operator, served by prometheus_client on `/metrics` of the metrics port.

    memtune_jobs{phase}                          MemoryTuningJobs the operator sees, by status.phase ("" = none yet)
    memtune_reconcile_errors_total{reason}       passes that ended in an error (the API failed, a child was refused)
    memtune_attempts_total{backend}              children created: one per attempt (first tries and retries)
    memtune_retries_total{reason}                attempts that failed and were retried, by failure reason

A registry of its own, so that only these (and no process collectors a test run would share) are exported.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
JOBS = Gauge("memtune_jobs", "MemoryTuningJobs by status.phase", ["phase"], registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "memtune_reconcile_errors", "Reconcile passes that ended in an error", ["reason"], registry=REGISTRY
)
ATTEMPTS = Counter("memtune_attempts", "Children created, one per attempt", ["backend"], registry=REGISTRY)
RETRIES = Counter("memtune_retries", "Failed attempts that were retried", ["reason"], registry=REGISTRY)

_PHASES = ("", "Queued", "Pending", "Running", "Suspended", "Succeeded", "Failed")


class PhaseBook:
    """uid → phase of every job seen, kept from watch events (a deleted job leaves it), published as JOBS."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()

    def seen(self, uid: str, phase: str | None) -> None:
        with self._lock:
            self._phases[uid] = phase or ""
            self._publish()

    def clear(self) -> None:
        with self._lock:
            self._phases.clear()
            self._publish()

    def gone(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(_PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            JOBS.labels(phase=phase).set(count)


BOOK = PhaseBook()


def serve(port: int):
    """Start the endpoint on all interfaces; returns (server, thread) for shutdown."""
    return start_http_server(port, registry=REGISTRY)
