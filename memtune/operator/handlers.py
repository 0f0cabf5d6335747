"""kopf handlers: a create, a resume after a restart and a `suspend` flip each run one idempotent `Reconciler`
pass at once; a resync loop of the operator's own runs the same pass on every unfinished job every
`resync_seconds`.

No handler needs a finalizer (kopf's timers and daemons would each add one, and after `helm uninstall` nothing
would remove it: the job could never be deleted and its namespace would hang in Terminating). Children are
garbage-collected through their ownerReferences, so nothing has to run on deletion.

kopf keeps handler progress and its diff base in annotations under `memtune.dev/`; the diff base holds only
`spec.suspend` (the one field that may change, and the one the update handler watches), never the spec itself.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import threading
from typing import Any

import kopf

from memtune import spec
from memtune.operator import metrics
from memtune.operator.backends import Resource
from memtune.operator.kube import Kube, KubeError
from memtune.operator.reconcile import Outcome, Reconciler
from memtune.operator.settings import OperatorSettings
from memtune.operator.status import TERMINAL_PHASES

RESOURCE = (spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
JOBS = Resource(spec.API_GROUP, spec.API_VERSION, spec.PLURAL, spec.KIND)
SETTINGS = OperatorSettings.from_env()
COMPONENT = "memtune-operator"
log = logging.getLogger("memtune.operator")


class SuspendOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration, reduced to `spec.suspend`: the spec stays out of annotations."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        return {"spec": {"suspend": bool((essence.get("spec") or {}).get("suspend", False))}}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    logging.getLogger().setLevel(SETTINGS.log_level.upper())
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=spec.API_GROUP)
    settings.posting.enabled = False  # the Events are the operator's own (run_pass), not kopf's log lines
    settings.persistence.diffbase_storage = SuspendOnlyDiffBase(prefix=spec.API_GROUP, key="last-handled-configuration")
    memo.kube = Kube.connect()
    memo.locks = collections.defaultdict(threading.Lock)  # job uid → lock: one pass at a time per job
    memo.last_error = {}  # job uid → message of the last ReconcileError Event (posted once, not every resync)
    memo.jobs = {}  # uid → (namespace, name) of every job seen by the watch
    metrics.BOOK.clear()  # the watch lists every job again
    memo.metrics_server = metrics.serve(SETTINGS.metrics_port) if SETTINGS.metrics_port else None
    memo.resync = asyncio.create_task(_resync_forever(memo))


@kopf.on.cleanup()
async def shut_down(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    await asyncio.gather(memo.resync, return_exceptions=True)
    if memo.metrics_server is not None:
        server, thread = memo.metrics_server
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@kopf.on.event(*RESOURCE)
def track(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the list of jobs for the resync loop and the jobs-by-phase gauge (no finalizer needed)."""
    body = event["object"]
    uid = body["metadata"]["uid"]
    if event["type"] == "DELETED":
        memo.jobs.pop(uid, None)
        metrics.BOOK.gone(uid)
        return
    memo.jobs[uid] = (body["metadata"].get("namespace") or "default", body["metadata"]["name"])
    metrics.BOOK.seen(uid, (body.get("status") or {}).get("phase"))


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec.suspend")
def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """One pass now; never raises for a bad resource (the job gets Failed), only for API errors (kopf retries)."""
    meta = body["metadata"]
    run_pass(memo, meta.get("namespace") or "default", meta["name"], meta["uid"])


def run_pass(memo: kopf.Memo, namespace: str, name: str, uid: str, resync: bool = False) -> None:
    """Read the job afresh under its lock, run one pass, write its status and Events.

    Fresh, because the handlers and the resync loop both run passes: a body kopf handed over earlier may be older
    than the status the other one has written since. A resync skips finished jobs whose children have no TTL.
    """
    kube: Kube = memo.kube
    with memo.locks[uid]:
        body = kube.get(JOBS, namespace, name)
        if body is None or body["metadata"].get("uid") != uid or (resync and not _needs_resync(body)):
            return
        try:
            outcome = Reconciler(kube, SETTINGS, datetime.datetime.now(datetime.UTC), body).run()
        except KubeError as error:
            _report_error(memo, kube, body, error)
            raise
        memo.last_error.pop(uid, None)
        _apply(kube, body, outcome)


def _apply(kube: Kube, body: dict[str, Any], outcome: Outcome) -> None:
    meta = body["metadata"]
    if not _already(body.get("status") or {}, outcome.status):  # an unchanged status is not written again
        kube.patch(JOBS, meta.get("namespace") or "default", meta["name"], {"status": outcome.status}, sub="status")
    if outcome.created:
        metrics.ATTEMPTS.labels(backend=outcome.created).inc()
    if outcome.retried:
        metrics.RETRIES.labels(reason=outcome.retried).inc()
    if outcome.error:
        metrics.RECONCILE_ERRORS.labels(reason=outcome.error).inc()
    for kind, reason, message in outcome.events:
        level = logging.WARNING if kind == "Warning" else logging.INFO
        log.log(level, "%s/%s %s: %s", meta.get("namespace"), meta["name"], reason, message)
        kube.post_event(body, kind, reason, message, COMPONENT)


def _already(current: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Whether merging `patch` into `current` would change nothing (None deletes a key)."""
    return all(current.get(key) == value if value is not None else key not in current for key, value in patch.items())


def _report_error(memo: kopf.Memo, kube: Kube, body: dict[str, Any], error: KubeError) -> None:
    """An API error the pass could not get past: counted, and an Event once per distinct message."""
    metrics.RECONCILE_ERRORS.labels(reason=f"HTTP{error.status}").inc()
    uid = body["metadata"]["uid"]
    if memo.last_error.get(uid) == str(error):
        return
    memo.last_error[uid] = str(error)
    try:
        kube.post_event(body, "Warning", "ReconcileError", f"{error}; retrying", COMPONENT)
    except KubeError as failed:
        log.warning("cannot post an Event for %s: %s", body["metadata"]["name"], failed)


def _needs_resync(body: dict[str, Any]) -> bool:
    """Finished jobs need no more passes, unless their children still await ttlSecondsAfterFinished."""
    finished = (body.get("status") or {}).get("phase") in TERMINAL_PHASES
    return not finished or (body.get("spec") or {}).get("ttlSecondsAfterFinished") is not None


async def _resync_forever(memo: kopf.Memo) -> None:
    """Every `resync_seconds`, one pass per unfinished job (progress, failures, deadlines, TTL)."""
    while True:
        await asyncio.sleep(SETTINGS.resync_seconds)
        for uid, (namespace, name) in list(memo.jobs.items()):
            try:
                await asyncio.to_thread(run_pass, memo, namespace, name, uid, True)
            except KubeError as error:
                log.warning("resync of %s/%s failed: %s", namespace, name, error)
            except Exception:
                metrics.RECONCILE_ERRORS.labels(reason="Unexpected").inc()
                log.exception("resync of %s/%s failed", namespace, name)
