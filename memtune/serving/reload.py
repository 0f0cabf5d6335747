"""Loading and reloading: the first load, then newer committed runs of a job output, without dropping a request.

A reload looks for the newest committed run (a listing: cheap enough to poll), verifies and deserialises it on the
caller's thread while the old model keeps answering, then queues the swap behind the requests already waiting
(batcher.py). A run that fails verification is refused, remembered and never retried; the old model stays.
"""

from __future__ import annotations

import logging
import threading
from pathlib import PurePosixPath

from memtune import storage
from memtune.manifest import IntegrityError
from memtune.redact import redact
from memtune.serving.batcher import Batcher
from memtune.serving.engine import ServedModel, latest_run_name, prepare
from memtune.serving.metrics import ServerMetrics
from memtune.spec import ModelError

log = logging.getLogger(__name__)


class ReloadRefused(RuntimeError):
    """The newest run failed verification or loading; the served model is unchanged."""


def default_model_name(ref: str) -> str:
    """The name clients pass as `model`: the job output's folder name (`.../facts` -> `facts`), the job's name for
    a run folder (`.../facts/runs/<id>` -> `facts`), or the base model alias."""
    parts = PurePosixPath(ref.removeprefix("file://").rstrip("/")).parts
    if len(parts) >= 3 and parts[-2] == storage.RUNS_DIR and storage.RUN_ID_PATTERN.match(parts[-1]):
        return parts[-3]
    return parts[-1] if parts else ref


class Reloader:
    def __init__(
        self, ref: str, name: str, batcher: Batcher, metrics: ServerMetrics, *, device: str | None, dtype: str | None
    ):
        """device/dtype: where every run this server loads runs (see engine.prepare)."""
        self.ref = ref
        self.device = device
        self.dtype = dtype
        self.name = name
        self.batcher = batcher
        self.metrics = metrics
        self.refused: dict[str, str] = {}
        """Run name -> why it was refused."""
        self._lock = threading.Lock()

    def load(self) -> ServedModel:
        """The first load (verify, deserialise, attach)."""
        with self._lock:
            model = self.batcher.swap(prepare(self.ref, device=self.device, dtype=self.dtype))
            self.metrics.serving(self.name, model.run_name, model.manifest_sha256)
            log.info("serving %s as %r (run %s)", redact(self.ref), self.name, model.run_name or "-")
            return model

    def reload(self) -> dict[str, object]:
        """Serve the newest committed run if it is newer than the served one. Returns what happened; raises
        ReloadRefused (verification or loading failed: the old model keeps serving) or StorageError (transient)."""
        with self._lock:
            current = self.batcher.model
            if current is None:
                raise ReloadRefused("the first load has not finished")
            latest = latest_run_name(self.ref)
            if latest is None or latest == current.run_name:
                reason = "not a job output" if latest is None else "already serving the newest committed run"
                return {"reloaded": False, "run": current.run_name, "reason": reason}
            if latest in self.refused:
                raise ReloadRefused(f"run {latest} was refused: {self.refused[latest]}")
            try:
                model = self.batcher.swap(prepare(self.ref, current, device=self.device, dtype=self.dtype))
            except (IntegrityError, ModelError, OSError, ValueError) as error:
                self.refused[latest] = str(error)
                self.metrics.reloads.labels(result="refused").inc()
                reason = redact(str(error))
                log.error("reload of run %s refused, still serving %s: %s", latest, current.run_name, reason)
                raise ReloadRefused(f"run {latest} was refused: {error}") from error
            self.metrics.reloads.labels(result="ok").inc()
            self.metrics.serving(self.name, model.run_name, model.manifest_sha256)
            log.info("reloaded: run %s replaces %s", model.run_name, current.run_name)
            return {"reloaded": True, "run": model.run_name, "previous": current.run_name}

    def poll(self, interval_s: float, stop: threading.Event) -> None:
        """Call `reload` every `interval_s` until `stop` is set; failures are logged and counted, never raised."""
        while not stop.wait(interval_s):
            try:
                self.reload()
            except ReloadRefused:
                pass  # logged once when refused
            except storage.StorageError as error:
                self.metrics.reloads.labels(result="error").inc()
                log.warning("reload check failed (will retry): %s", redact(str(error)))
            except Exception:
                self.metrics.reloads.labels(result="error").inc()
                log.exception("reload check failed (will retry)")
