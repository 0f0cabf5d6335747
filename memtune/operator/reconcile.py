"""The reconciler: one idempotent pass from a MemoryTuningJob's spec and its children to its status.

It is level-triggered: every pass looks at what exists (the attempt's child, its pods) and decides from that
alone, so a create, a resume after an operator restart and a periodic resync all run the same code, and a
restart mid-way never makes a second child (children have deterministic names: `{job}-{attempt}`, and their
kind is chosen once: see `Reconciler._backend_of`).

    spec invalid / local paths / not allowed .......... Failed (reason names the field)
    no child for the current attempt .................. create ConfigMap + child → Queued (or Suspended)
    the API server refuses the child (400/413/422) .... Failed, ChildRejected with the server's message
    child held by Kueue, or no pods yet ............... Queued (held: the deadline's clock stops)
    a pod of the attempt still in pod phase Pending ... Pending (the message says why it waits)
    child running ..................................... Running, progress from the rank-0 log
    child succeeded ................................... Succeeded, metrics + artifactsUri from the termination message
    child failed, retries left, failure retryable ..... attempt + 1 → Queued (the next pass creates the child)
    child failed otherwise, deadline passed ........... Failed
    finished + ttlSecondsAfterFinished elapsed ........ children deleted, the job kept
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

from memtune import contract
from memtune.operator import observe, pods, policy
from memtune.operator.backends import BACKENDS, BY_KIND, Backend, BackendError, ChildPhase, choose_backend
from memtune.operator.kube import CONFIG_MAPS, Kube, KubeError
from memtune.operator.settings import OperatorSettings
from memtune.operator.status import TERMINAL_PHASES, conditions_for, phase_reason
from memtune.spec import MemoryTuningJob, SpecError, local_paths_in, parse_job

Manifest = dict[str, Any]
LOG_TAIL_LINES = 50


@dataclass
class Outcome:
    """What one pass decided: a merge patch for `.status`, the Events to emit (type, reason, message), and for
    the metrics the kind of child it created, the reason of a failure it retried, the reason of an error."""

    status: Manifest = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    created: str | None = None
    retried: str | None = None
    error: str | None = None


def _timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


class Reconciler:
    """One pass over one job: build it per pass (it holds that pass's body, status and outcome)."""

    def __init__(self, kube: Kube, settings: OperatorSettings, now: datetime.datetime, body: Manifest):
        self.kube = kube
        self.settings = settings
        self.now = now
        self.body = body
        self.status = dict(body.get("status") or {})
        self.out = Outcome()
        self.backend: Backend | None = None

    def run(self) -> Outcome:
        if self.status.get("phase") in TERMINAL_PHASES:
            self._expire_children()
            return self.out
        try:
            job = _parse(self.body)
        except SpecError as error:
            return self._finish("Failed", "InvalidSpec", _one_line(error))
        if refused := policy.violations(job, self.settings):
            message = "; ".join(f"{path}: {why}" for path, why in refused)
            return self._finish("Failed", "PolicyViolation", message)
        local = local_paths_in(job.spec)
        if local:
            fields = ", ".join(f"{path}={value!r}" for path, value in local)
            message = f"local paths cannot be read on a cluster: {fields}; use s3:// (or another object store) URIs"
            return self._finish("Failed", "LocalPath", message)
        try:
            self.backend = self._backend_of(job)
        except BackendError as error:
            return self._finish("Failed", error.reason, str(error))
        return self._drive(job, self.backend)

    def _backend_of(self, job: MemoryTuningJob) -> Backend:
        """The kind of this job's children: chosen once, then read back, so an attempt never gets a second child
        of another kind (Kubeflow installed meanwhile, an operator restart, an expired CRD cache).

        Recorded in status.backend, and before that on the attempt's ConfigMap (created before the child)."""
        if (kind := self.status.get("backend")) in BY_KIND:
            return BY_KIND[kind]
        namespace, name = job.metadata.namespace or "default", job.metadata.name
        attempt = int(self.status.get("attempt") or 0)
        config_map = self.kube.get(CONFIG_MAPS, namespace, contract.spec_config_map_name(name, attempt))
        labels = ((config_map or {}).get("metadata") or {}).get("labels") or {}
        if labels.get(contract.BACKEND_LABEL) in BY_KIND:
            return BY_KIND[labels[contract.BACKEND_LABEL]]
        installed = {
            backend.resource.crd_name
            for backend in BACKENDS.values()
            if backend.resource.group != "batch" and self.kube.has_crd(backend.resource.crd_name)
        }
        for backend in BACKENDS.values():  # a child made before kinds were recorded (an older operator)
            available = backend.resource.group == "batch" or backend.resource.crd_name in installed
            if available and self.kube.get(backend.resource, namespace, contract.child_name(name, attempt)):
                return backend
        return choose_backend(job, installed)

    def _active_seconds(self) -> float:
        """Seconds since startTime, less the time held (suspended, or waiting for Kueue): the deadline's clock."""
        started = self.status.get("startTime")
        if not started:
            return 0.0
        held = float(self.status.get("suspendedSeconds") or 0)
        if since := self.status.get("suspendedSince"):
            held += (self.now - _parse_time(since)).total_seconds()
        return (self.now - _parse_time(started)).total_seconds() - held

    def _drive(self, job: MemoryTuningJob, backend: Backend) -> Outcome:
        namespace, name = job.metadata.namespace or "default", job.metadata.name
        attempt = int(self.status.get("attempt") or 0)
        child_name = contract.child_name(name, attempt)
        kind = backend.resource.kind

        deadline = job.spec.activeDeadlineSeconds
        if deadline and (active := self._active_seconds()) > deadline:
            self.kube.delete(backend.resource, namespace, child_name)
            message = f"ran {int(active)}s (not counting time suspended), over activeDeadlineSeconds={deadline}"
            return self._finish("Failed", "DeadlineExceeded", message)

        child = self.kube.get(backend.resource, namespace, child_name)
        if child is None:
            try:
                self.kube.create(CONFIG_MAPS, namespace, pods.spec_config_map(job, attempt, self.body, kind))
                child = backend.build(job, attempt, self.body, self.settings)
                created = self.kube.create(backend.resource, namespace, child)
            except KubeError as error:
                if not error.refused:
                    raise
                message = f"the API server refused {kind} {child_name} (HTTP {error.status}): {error.detail}"
                self.out.error = "ChildRejected"
                return self._finish("Failed", "ChildRejected", message)
            if created:
                self.out.created = kind
                self.out.events.append(("Normal", "Created", f"created {kind} {child_name}"))
            if job.spec.suspend:
                phase, reason = "Suspended", "Suspended"
            elif job.spec.queueName:
                phase, reason = "Queued", "WaitingForAdmission"
            else:
                phase, reason = "Queued", "Created"
            return self._set(phase, reason, f"{kind} {child_name} (attempt {attempt})", attempt=attempt)

        suspend = job.spec.suspend
        # With a Kueue queue, Kueue admits the child by un-suspending it: the operator only ever holds it.
        if backend.is_suspended(child) != suspend and (suspend or not job.spec.queueName):
            self.kube.patch(backend.resource, namespace, child_name, backend.suspend_patch(suspend))
            verb = "suspended" if suspend else "resumed"
            self.out.events.append(("Normal", verb.capitalize(), f"{verb} {kind} {child_name}"))
            if not suspend:
                return self._set("Queued", "Resumed", f"{child_name} resumed")
        if suspend:
            return self._set("Suspended", "Suspended", f"{child_name} is suspended")

        pod_list = self.kube.list_pods(namespace, contract.pod_selector(name, attempt))
        failure = observe.diagnose(pod_list)
        state = backend.state(child)
        if failure is not None and failure.permanent:
            if state.phase not in (ChildPhase.FAILED, ChildPhase.SUCCEEDED):
                # e.g. an image that cannot be pulled: the pods would wait forever, so release the nodes.
                self.kube.delete(backend.resource, namespace, child_name)
            return self._finish("Failed", failure.reason, failure.message)
        if state.phase is ChildPhase.SUCCEEDED:
            return self._succeed(observe.master_pod(pod_list))
        if state.phase is ChildPhase.FAILED:
            reason, message = (failure.reason, failure.message) if failure else ("AttemptFailed", state.message)
            return self._retry_or_fail(job, attempt, reason, message)
        if state.phase is ChildPhase.SUSPENDED or backend.is_suspended(child):  # not by us: Kueue has not admitted it
            return self._set("Queued", "WaitingForAdmission", f"{child_name} waits in its queue")
        if (starting := observe.pending_pod(pod_list)) is not None:  # no rank trains until every pod runs
            return self._set("Pending", "PodsStarting", f"{child_name}: {starting}")
        if state.phase is ChildPhase.RUNNING:
            extra: Manifest = {"startTime": self.status.get("startTime") or _timestamp(self.now)}
            if (progress := self._progress(namespace, observe.master_pod(pod_list))) is not None:
                extra["progress"] = progress
            return self._set("Running", "Training", f"{child_name} is training", **extra)
        return self._set("Queued", "Waiting", f"{child_name} is waiting for its pods")

    def _progress(self, namespace: str, master: Manifest | None) -> Manifest | None:
        """The latest step report, with percentage and ETA (the step rate since the first report of the attempt)."""
        if master is None:
            return None
        log = self.kube.pod_log(namespace, master["metadata"]["name"], observe.container_of(master), LOG_TAIL_LINES)
        report = observe.last_progress(log)
        if report is None:
            return None
        step, max_steps = report["step"], int(report.get("max_steps") or 0)
        before = self.status.get("progress") or {}
        now = _timestamp(self.now)
        first_step, first_time = before.get("firstStep"), before.get("firstStepTime")
        if first_step is None or first_time is None or step < first_step:  # a new attempt starts a new rate
            first_step, first_time = step, now
        progress: Manifest = {
            "step": step,
            "maxSteps": max_steps,
            "updateTime": now,
            "firstStep": first_step,
            "firstStepTime": first_time,
            "percentage": min(100, 100 * step // max_steps) if max_steps else None,
            "loss": loss if isinstance(loss := report.get("loss"), float | int) and math.isfinite(loss) else None,
            "estimatedRemainingSeconds": None,
        }
        elapsed = (self.now - _parse_time(first_time)).total_seconds()
        if max_steps and step > first_step and elapsed > 0:
            rate = (step - first_step) / elapsed  # steps per second
            progress["estimatedRemainingSeconds"] = max(0, round((max_steps - step) / rate))
        return progress

    def _succeed(self, master: Manifest | None) -> Outcome:
        result = observe.final_result(master) if master is not None else {}
        extra: Manifest = {}
        metrics = {key: value for key, value in (result.get("metrics") or {}).items() if isinstance(value, int | float)}
        if metrics:
            extra["metrics"] = metrics
        if isinstance(result.get("artifactsUri"), str):
            extra["artifactsUri"] = result["artifactsUri"]
        message = f"artifacts at {extra['artifactsUri']}" if "artifactsUri" in extra else "training finished"
        return self._finish("Succeeded", "Succeeded", message, **extra)

    def _retry_or_fail(self, job: MemoryTuningJob, attempt: int, reason: str, message: str) -> Outcome:
        if attempt >= job.spec.backoffLimit:
            limit = f"backoffLimit={job.spec.backoffLimit} reached: {message}"
            return self._finish("Failed", reason, limit)
        following = attempt + 1
        retry = f"attempt {attempt} failed ({reason}: {message}); starting attempt {following}"
        self.out.events.append(("Warning", reason, retry))
        self.out.retried = reason
        return self._set("Queued", "Retrying", retry, attempt=following, progress=None)

    def _expire_children(self) -> None:
        """ttlSecondsAfterFinished: delete every attempt's child, then its ConfigMap; the job itself stays.

        The latest attempt's ConfigMap goes last, so its absence says the clean-up is complete."""
        ttl = (self.body.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished = self.status.get("completionTime")
        if ttl is None or not finished or (self.now - _parse_time(finished)).total_seconds() < ttl:
            return
        namespace, name = self.body["metadata"].get("namespace") or "default", self.body["metadata"]["name"]
        attempts = range(int(self.status.get("attempt") or 0) + 1)
        if self.kube.get(CONFIG_MAPS, namespace, contract.spec_config_map_name(name, attempts[-1])) is None:
            return
        kind = self.status.get("backend")
        kinds = [BY_KIND[kind]] if kind in BY_KIND else list(BACKENDS.values())
        for attempt in attempts:
            for backend in kinds:
                self.kube.delete(backend.resource, namespace, contract.child_name(name, attempt))
        for attempt in attempts:
            self.kube.delete(CONFIG_MAPS, namespace, contract.spec_config_map_name(name, attempt))

    def _hold(self, held: bool) -> Manifest:
        """Status fields that stop the deadline's clock while the job is held, once it has started (None removes
        a field in a merge patch): like a Kubernetes Job, whose activeDeadlineSeconds does not run while suspended."""
        since = self.status.get("suspendedSince")
        if held and not since and self.status.get("startTime"):
            return {"suspendedSince": _timestamp(self.now)}
        if not held and since:
            total = int(self.status.get("suspendedSeconds") or 0)
            total += max(0, int((self.now - _parse_time(since)).total_seconds()))
            return {"suspendedSeconds": total, "suspendedSince": None}
        return {}

    def _finish(self, phase: str, reason: str, message: str, **extra: Any) -> Outcome:
        extra["completionTime"] = _timestamp(self.now)
        if phase == "Failed":
            self.out.events.append(("Warning", reason, message))
        return self._set(phase, reason, message, **extra)

    def _set(self, phase: str, reason: str, message: str, **extra: Any) -> Outcome:
        generation = self.body["metadata"].get("generation")
        now = _timestamp(self.now)
        self.out.status = {
            "phase": phase,
            "conditions": conditions_for(self.status.get("conditions"), phase, reason, message, generation, now),
            "observedGeneration": generation,
            "attempt": int(self.status.get("attempt") or 0),
            **self._hold(phase == "Suspended" or reason == "WaitingForAdmission"),
            **extra,
        }
        if self.backend is not None:
            self.out.status["backend"] = self.backend.resource.kind
        if (phase, reason) != phase_reason(self.status) and phase in ("Running", "Succeeded"):
            self.out.events.append(("Normal", phase, message))
        return self.out


def _parse(body: Manifest) -> MemoryTuningJob:
    """Validate the custom resource with the same models as local runs (the CRD may be older than the operator)."""
    meta = body.get("metadata") or {}
    document = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": body.get("spec"),
    }
    return parse_job(document, "MemoryTuningJob")


def _one_line(error: SpecError) -> str:
    """A condition message naming every bad field: `spec.finetuneArgs.max_steps: ...; spec.output: ...`."""
    return "invalid spec: " + "; ".join(f"{path}: {message}" for path, message in error.problems)
