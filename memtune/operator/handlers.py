"""kopf handlers: every trigger (create, resume after a restart, a `suspend` flip, the periodic resync) runs
the same idempotent `Reconciler` pass and writes its status patch and Events.

Handler progress and the diff base live in annotations under `memtune.dev/`, so the CRD's status stays exactly
what `memtune.spec.MemoryTuningJobStatus` declares.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
from typing import Any

import kopf

from memtune import spec
from memtune.operator.kube import Kube
from memtune.operator.reconcile import Reconciler
from memtune.operator.settings import OperatorSettings
from memtune.operator.status import TERMINAL_PHASES

RESOURCE = (spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
SETTINGS = OperatorSettings.from_env()  # read at import: the resync interval shapes the timer below


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    logging.getLogger().setLevel(SETTINGS.log_level.upper())
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=spec.API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=spec.API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO  # Normal events (Created, Running, Succeeded) too, not only warnings
    memo.kube = Kube.connect()
    memo.locks = collections.defaultdict(threading.Lock)  # job uid → lock: one pass at a time per job


def needs_resync(status: kopf.Status, spec: kopf.Spec, **_: Any) -> bool:
    """Finished jobs need no more passes, unless their children still await ttlSecondsAfterFinished."""
    return status.get("phase") not in TERMINAL_PHASES or spec.get("ttlSecondsAfterFinished") is not None


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec.suspend")
@kopf.timer(*RESOURCE, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds, when=needs_resync)
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """One pass; never raises for a bad resource (the job gets Failed), only for API errors (kopf retries).

    The timer runs beside the change handlers; the lock keeps their passes from interleaving, and the body is
    read inside it (for timers kopf keeps it live), so a pass never acts on a spec older than the last one's.
    """
    with memo.locks[body.metadata.uid]:
        outcome = Reconciler(memo.kube, SETTINGS, datetime.datetime.now(datetime.UTC), dict(body)).run()
    if outcome.status:
        patch["status"] = outcome.status
    for kind, reason, message in outcome.events:
        logger.log(logging.WARNING if kind == "Warning" else logging.INFO, "%s: %s", reason, message)
        kopf.event(body, type=kind, reason=reason, message=message)
