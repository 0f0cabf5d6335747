"""Lamini's job calls — `get_jobs`, `check_job_status`, `cancel_job`, `resume_job` — over local runs and cluster jobs.

A job is a MemoryTuningJob name (`job_id` in Lamini's dicts). Every call answers Lamini's status dict::

    {"job_id": "facts-v1", "status": "COMPLETED", "model_name": "<run folder or s3:// URI>", ...}

with Lamini's statuses: SCHEDULED, QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED.

Local jobs are the SDK's own: `MemoryTuner.train` runs them in the calling process and keeps a small journal,
`{output_root}/{job}/job.json` (status, pid, start time), next to the job's runs. A local job is COMPLETED when a run
has committed (the manifest is the commit), RUNNING while the process in its journal lives, FAILED when that process
died without committing (training again with the same inputs resumes from its checkpoint), CANCELLED after
`cancel_job` or Ctrl-C. Cancelling a local job that runs in another process sends that process SIGTERM, after checking
it is the process that started the job (pid and start time), so a reused pid is never signalled.

Cluster jobs map the operator's phase: Pending -> SCHEDULED, Queued -> QUEUED, Running -> RUNNING,
Succeeded -> COMPLETED, Failed -> FAILED, Suspended -> CANCELLED. `cancel_job` suspends the job (`spec.suspend`, the
one spec field that may change while it runs): its pods go, it keeps its checkpoint and `resume_job` continues it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from memtune import storage
from memtune.spec import MemoryTuningJobStatus, is_remote

JOURNAL_NAME = "job.json"
PHASE_STATUS = {
    None: "SCHEDULED",
    "Pending": "SCHEDULED",
    "Queued": "QUEUED",
    "Running": "RUNNING",
    "Succeeded": "COMPLETED",
    "Failed": "FAILED",
    "Suspended": "CANCELLED",
}


class JobError(LookupError):
    """No such job, or the call cannot apply to it; the message says which job and why."""


def _process_start(pid: int) -> float | None:
    import psutil  # here, not at import: the SDK module is imported by the light operator image too

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class LocalJobs:
    """The SDK's local jobs under `output_root` (a local folder)."""

    def __init__(self, output_root: str):
        if is_remote(output_root):
            raise JobError(f"local jobs live in a local folder, not {output_root!r}")
        self.root = Path(output_root.removeprefix("file://")).expanduser()

    def _journal_path(self, name: str) -> Path:
        return self.root / name / JOURNAL_NAME

    def _read_journal(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._journal_path(name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def _write_journal(self, name: str, journal: dict[str, Any]) -> None:
        path = self._journal_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(journal, indent=2), encoding="utf-8")
        temporary.replace(path)

    def started(self, name: str, dataset_id: str) -> None:
        """Journal a job this process is about to run."""
        pid = os.getpid()
        self._write_journal(
            name,
            {
                "status": "RUNNING",
                "dataset_id": dataset_id,
                "pid": pid,
                "process_start": _process_start(pid),
                "host": socket.gethostname(),
                "start_time": time.time(),
            },
        )

    def finished(self, name: str, status: str, **details: Any) -> None:
        """Journal how the job ended (COMPLETED, FAILED with `error`, CANCELLED)."""
        journal = self._read_journal(name)
        journal.update(status=status, end_time=time.time(), **details)
        self._write_journal(name, journal)

    def _alive(self, journal: dict[str, Any]) -> bool:
        pid = journal.get("pid")
        if not isinstance(pid, int) or journal.get("host") != socket.gethostname():
            return False
        started = _process_start(pid)
        return started is not None and started == journal.get("process_start")

    def status(self, name: str) -> dict[str, Any]:
        """Lamini's status dict of one local job; JobError when neither a journal nor a run exists."""
        journal = self._read_journal(name)
        latest = storage.latest_committed_run(str(self.root / name)) if (self.root / name).is_dir() else None
        if not journal and latest is None:
            raise JobError(f"no local job {name!r} under {self.root}")
        status = journal.get("status", "COMPLETED")
        if status == "RUNNING" and not self._alive(journal):
            status = "FAILED"
            journal.setdefault("error", "the process running it ended before a run committed; train again to resume")
        result: dict[str, Any] = {"job_id": name, "status": status}
        if latest is not None and status in ("COMPLETED", "FAILED", "CANCELLED"):
            result["model_name"] = latest
            result["latest_completed_run"] = latest
        if status == "COMPLETED" and latest is not None:
            result["model_name"] = latest
        keep = ("dataset_id", "start_time", "end_time", "error", "recall", "unlearned", "steps")
        result.update({key: journal[key] for key in keep if key in journal})
        return result

    def list(self) -> list[dict[str, Any]]:
        """Every local job, newest first."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if (p / JOURNAL_NAME).is_file() or (p / "runs").is_dir()]
        jobs = []
        for name in names:
            try:
                jobs.append(self.status(name))
            except JobError:
                continue
        return sorted(jobs, key=lambda job: job.get("start_time") or 0.0, reverse=True)

    def cancel(self, name: str) -> dict[str, Any]:
        """Stop a running local job (SIGTERM to its process); a finished job's status comes back unchanged."""
        current = self.status(name)
        if current["status"] != "RUNNING":
            return current
        journal = self._read_journal(name)
        if journal.get("pid") == os.getpid():
            raise JobError(f"job {name!r} runs in this process: interrupt it (Ctrl-C) to cancel it")
        os.kill(journal["pid"], signal.SIGTERM)
        self.finished(name, "CANCELLED")
        return self.status(name)


def cluster_status(name: str, document: dict[str, Any]) -> dict[str, Any]:
    """Lamini's status dict of a MemoryTuningJob as the cluster reports it."""
    status = MemoryTuningJobStatus.model_validate(document.get("status") or {})
    suspended = bool((document.get("spec") or {}).get("suspend"))
    phase = "Suspended" if suspended and status.phase not in ("Succeeded", "Failed") else status.phase
    result: dict[str, Any] = {"job_id": name, "status": PHASE_STATUS.get(phase, "RUNNING"), "phase": phase}
    if status.artifactsUri:
        result["model_name"] = status.artifactsUri
    if status.progress is not None:
        result["step"], result["max_steps"] = status.progress.step, status.progress.maxSteps
    if status.metrics:
        result["metrics"] = status.metrics
    if status.startTime:
        result["start_time"] = status.startTime
    if status.completionTime:
        result["end_time"] = status.completionTime
    for condition in status.conditions or []:
        if condition.type == "Failed" and condition.status == "True":
            result["error"] = f"{condition.reason}: {condition.message}"
    return result
