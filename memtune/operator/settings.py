"""Operator settings, read once from the operator pod's environment (see docs/trainer-contract.md).

The chart's values set them; they are the cluster admin's, and decide what a job may override (docs/cluster.md,
"Who may do what").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from memtune import contract

DEFAULT_TRAINER_IMAGE = "ghcr.io/memtune/trainer:0.1.0"
DEFAULT_METRICS_PORT = 8081


def _names(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the training pods when a job sets no `spec.trainer.image`."""
    storage_secret: str | None = None
    """Secret (by name, in the job's namespace) whose keys become the trainer's environment when a job sets no
    `spec.storage.secretRef`; None: no credentials (public buckets, or IAM bound to the service account)."""
    log_level: str = "INFO"
    """Python log level of the operator."""
    resync_seconds: float = 10.0
    """Seconds between two reconciliations of a running job (progress, failures, deadlines, TTL)."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of the Prometheus metrics endpoint (`/metrics`); 0 turns it off."""
    trainjob_runtime: str = contract.TRAINJOB_RUNTIME
    """ClusterTrainingRuntime every TrainJob names (the chart ships it)."""
    trainer_service_account: str | None = None
    """Service account of the training pods when a job names none; None: the namespace's `default`."""
    allowed_images: tuple[str, ...] = ()
    """fnmatch patterns a job's `spec.trainer.image` must match; empty: jobs may not choose an image."""
    allowed_service_accounts: tuple[str, ...] = ()
    """Names a job's `spec.trainer.serviceAccountName` may take; empty: jobs may not choose one."""

    @classmethod
    def from_env(cls) -> OperatorSettings:
        env = os.environ
        return cls(
            trainer_image=env.get(contract.ENV_TRAINER_IMAGE) or DEFAULT_TRAINER_IMAGE,
            storage_secret=env.get(contract.ENV_STORAGE_SECRET) or None,
            log_level=env.get(contract.ENV_LOG_LEVEL) or "INFO",
            resync_seconds=float(env.get(contract.ENV_RESYNC_SECONDS) or 10.0),
            metrics_port=int(env.get(contract.ENV_METRICS_PORT) or DEFAULT_METRICS_PORT),
            trainjob_runtime=env.get(contract.ENV_TRAINJOB_RUNTIME) or contract.TRAINJOB_RUNTIME,
            trainer_service_account=env.get(contract.ENV_TRAINER_SERVICE_ACCOUNT) or None,
            allowed_images=_names(env.get(contract.ENV_ALLOWED_IMAGES)),
            allowed_service_accounts=_names(env.get(contract.ENV_ALLOWED_SERVICE_ACCOUNTS)),
        )
