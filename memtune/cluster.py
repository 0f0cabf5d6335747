"""The client side of the cluster: submit MemoryTuningJobs and follow them through the Kubernetes API.

    memtune submit examples/cluster/facts-job.yaml -n ml
    memtune wait facts -n ml            # exits 1 if the job fails
    memtune status facts -n ml
    memtune logs facts -n ml            # the rank-0 trainer pod of the latest attempt

The user's kubeconfig (or the pod's service account) decides which cluster; the operator does the rest.
`KubernetesBackend` is what `MemoryTuner(backend="kubernetes")` uses to submit a job and wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import kubernetes
import typer
from rich.console import Console
from rich.markup import escape

from memtune import contract
from memtune.failures import fail
from memtune.redact import redact
from memtune.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    MemoryTuningJob,
    MemoryTuningJobStatus,
    SpecError,
    load_job_file,
    local_paths_in,
)

TERMINAL_PHASES = ("Succeeded", "Failed")


class ClusterError(RuntimeError):
    """The cluster refused a request, or a job failed; the message says which and why."""


def _api_client() -> tuple[kubernetes.client.ApiClient, str]:
    """An API client for the current kubeconfig context (or the pod's service account), and its namespace."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        namespace_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        return kubernetes.client.ApiClient(configuration), namespace_file.read_text().strip()
    except kubernetes.config.ConfigException:
        pass
    try:
        kubernetes.config.load_kube_config(client_configuration=configuration)
        _, active = kubernetes.config.list_kube_config_contexts()
    except (kubernetes.config.ConfigException, FileNotFoundError) as error:
        raise ClusterError(f"no Kubernetes cluster configured (kubeconfig or in-cluster): {error}") from None
    return kubernetes.client.ApiClient(configuration), active.get("context", {}).get("namespace") or "default"


class ClusterClient:
    """MemoryTuningJobs in one namespace (default: the kubeconfig context's)."""

    def __init__(self, namespace: str | None = None):
        api, default_namespace = _api_client()
        self.namespace = namespace or default_namespace
        self._objects = kubernetes.client.CustomObjectsApi(api)
        self._core = kubernetes.client.CoreV1Api(api)

    def submit(self, job: MemoryTuningJob) -> dict[str, Any]:
        """Create the job; local paths are refused here, since no pod can read this machine's disk."""
        local = local_paths_in(job.spec)
        if local:
            problems = [
                (path, f"{value!r} is a local path; a cluster needs an s3:// (or other remote) URI")
                for path, value in local
            ]
            raise SpecError(problems, job.metadata.name)
        body = job.model_dump(mode="json", exclude_none=True)
        body["metadata"]["namespace"] = self.namespace
        try:
            return self._objects.create_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, body)
        except kubernetes.client.ApiException as error:
            if error.status == 409:
                raise ClusterError(
                    f"MemoryTuningJob {self.namespace}/{job.metadata.name} exists already; a job's spec cannot change"
                    " once it runs, so submit a retuning under a new metadata.name"
                ) from None
            raise ClusterError(f"the cluster refused the job: {_reason(error)}") from None

    def get(self, name: str) -> dict[str, Any]:
        try:
            return self._objects.get_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, name)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                raise ClusterError(f"no MemoryTuningJob {name!r} in namespace {self.namespace!r}") from None
            raise ClusterError(f"cannot read MemoryTuningJob {name!r}: {_reason(error)}") from None

    def list(self) -> list[dict[str, Any]]:
        """Every MemoryTuningJob of the namespace, as the API server returns them."""
        try:
            listing = self._objects.list_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL)
        except kubernetes.client.ApiException as error:
            raise ClusterError(f"cannot list MemoryTuningJobs in {self.namespace!r}: {_reason(error)}") from None
        return list(listing.get("items") or [])

    def set_suspend(self, name: str, suspend: bool) -> dict[str, Any]:
        """Suspend (pods go, the checkpoint stays) or resume a job: the only spec field that may change as it runs."""
        self.get(name)  # a missing job is named as such, not as a failed patch
        try:
            return self._objects.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, PLURAL, name, {"spec": {"suspend": suspend}}
            )
        except kubernetes.client.ApiException as error:
            raise ClusterError(f"cannot {'suspend' if suspend else 'resume'} {name!r}: {_reason(error)}") from None

    def status(self, name: str) -> MemoryTuningJobStatus:
        return MemoryTuningJobStatus.model_validate(self.get(name).get("status") or {})

    def wait(
        self,
        name: str,
        timeout: float | None = None,
        poll_seconds: float = 5.0,
        on_update: Callable[[MemoryTuningJobStatus], None] | None = None,
    ) -> MemoryTuningJobStatus:
        """Poll until the job Succeeds or Fails (returned either way); ClusterError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            status = self.status(name)
            if on_update is not None and status != last:
                on_update(status)
            last = status
            if status.phase in TERMINAL_PHASES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError(f"MemoryTuningJob {name!r} is still {status.phase or 'Pending'} after {timeout}s")
            time.sleep(poll_seconds)

    def logs(self, name: str, attempt: int | None = None, tail_lines: int | None = None) -> str:
        """The rank-0 trainer's log of `attempt` (default: the latest)."""
        if attempt is None:
            attempt = self.status(name).attempt or 0
        selector = contract.pod_selector(name, attempt)
        pods = self._core.list_namespaced_pod(self.namespace, label_selector=selector).items
        rank0 = [
            pod for pod in pods if contract.is_rank0_pod(self._core.api_client.sanitize_for_serialization(pod.metadata))
        ]
        if not rank0:
            raise ClusterError(f"no trainer pod yet for MemoryTuningJob {name!r} attempt {attempt}")
        containers = {container.name for container in (rank0[0].spec and rank0[0].spec.containers) or []}
        response = self._core.read_namespaced_pod_log(
            rank0[0].metadata.name,
            self.namespace,
            container=next((c for c in contract.CONTAINER_NAMES if c in containers), contract.CONTAINER_NAME),
            tail_lines=tail_lines,
            _preload_content=False,  # the client (v36) turns a "str" body into "b'...'"; decode it here
        )
        return response.data.decode("utf-8", errors="replace")


def _reason(error: kubernetes.client.ApiException) -> str:
    return f"{error.status} {error.reason}: {error.body or ''}".strip()


def failure_message(status: MemoryTuningJobStatus) -> str:
    for condition in status.conditions or []:
        if condition.type == "Failed" and condition.status == "True":
            return f"{condition.reason}: {condition.message}"
    return status.phase or "unknown"


class KubernetesBackend:
    """`MemoryTuner(backend="kubernetes")`: submit the job, wait for it, return what the trainer reported."""

    def __init__(self, namespace: str | None = None, poll_seconds: float = 10.0):
        self.client = ClusterClient(namespace)
        self.poll_seconds = poll_seconds

    def train(self, job: MemoryTuningJob) -> dict[str, Any]:
        self.client.submit(job)
        status = self.client.wait(job.metadata.name, poll_seconds=self.poll_seconds)
        if status.phase != "Succeeded":
            raise ClusterError(f"MemoryTuningJob {job.metadata.name!r} failed: {failure_message(status)}")
        return {
            "job_name": job.metadata.name,
            "model_name": status.artifactsUri,
            "status": "COMPLETED",
            "metrics": status.metrics or {},
        }


# ------------------------------------------------------------------------------------------------------------
# CLI: `memtune submit | status | wait | logs`

Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: the kubeconfig's).")]
_console = Console()


def _eta(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _summary(name: str, status: MemoryTuningJobStatus) -> str:
    """`nba: Running attempt 1 step 40/100 (40%) ETA 2m30s loss 0.5 on TrainJob recall=1`."""
    progress = ""
    if (report := status.progress) is not None:
        progress = f" step {report.step}/{report.maxSteps}"
        if report.percentage is not None:
            progress += f" ({report.percentage}%)"
        if report.estimatedRemainingSeconds is not None and status.phase == "Running":
            progress += f" ETA {_eta(report.estimatedRemainingSeconds)}"
        if report.loss is not None:
            progress += f" loss {report.loss:.4g}"
    if status.backend:
        progress += f" on {status.backend}"
    metrics = (
        " " + " ".join(f"{key}={value:g}" for key, value in sorted(status.metrics.items())) if status.metrics else ""
    )
    attempt = f" attempt {status.attempt}" if status.attempt else ""
    return f"{name}: {status.phase or 'Pending'}{attempt}{progress}{metrics}"


def submit(path: Path, namespace: Namespace = None) -> None:
    """Submit a MemoryTuningJob manifest to the cluster (dataset and output must be remote URIs)."""
    try:
        created = ClusterClient(namespace).submit(load_job_file(path))
    except (SpecError, ClusterError) as error:
        raise fail(error) from None
    meta = created["metadata"]
    _console.print(f"memorytuningjob.memtune.dev/{meta['name']} created in namespace {meta.get('namespace')}")


def status(name: str, namespace: Namespace = None) -> None:
    """Show a job's phase, progress, metrics and conditions."""
    try:
        current = ClusterClient(namespace).status(name)
    except ClusterError as error:
        raise fail(error) from None
    _console.print(_summary(name, current), highlight=False)
    for condition in current.conditions or []:
        if condition.status == "True":
            line = f"  {condition.type}: {condition.reason} {redact(condition.message)}".rstrip()
            _console.print(escape(line), highlight=False)
    if current.artifactsUri:
        _console.print(f"  artifacts: {current.artifactsUri}", highlight=False)


def wait(
    name: str,
    namespace: Namespace = None,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between two checks.")] = 5.0,
) -> None:
    """Wait for a job to finish; exit code 1 if it failed or the timeout passed."""
    try:
        final = ClusterClient(namespace).wait(
            name, timeout, poll, on_update=lambda s: _console.print(_summary(name, s), highlight=False)
        )
    except ClusterError as error:
        raise fail(error) from None
    if final.phase != "Succeeded":
        raise fail(ClusterError(failure_message(final)))


def logs(
    name: str,
    namespace: Namespace = None,
    attempt: Annotated[int | None, typer.Option(help="Attempt to show (default: the latest).")] = None,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
) -> None:
    """Print the rank-0 trainer pod's log."""
    try:
        text = ClusterClient(namespace).logs(name, attempt, tail)
    except ClusterError as error:
        raise fail(error) from None
    print(text, end="" if text.endswith("\n") else "\n")


def register_commands(app: typer.Typer) -> None:
    """Add `submit`, `status`, `wait` and `logs` to the memtune CLI."""
    for command in (submit, status, wait, logs):
        app.command()(command)
