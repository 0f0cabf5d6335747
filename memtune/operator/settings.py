"""Operator settings, read once from the operator pod's environment (see docs/trainer-contract.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from memtune import contract

DEFAULT_TRAINER_IMAGE = "ghcr.io/memtune/trainer:0.1.0"


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

    @classmethod
    def from_env(cls) -> OperatorSettings:
        return cls(
            trainer_image=os.environ.get(contract.ENV_TRAINER_IMAGE) or DEFAULT_TRAINER_IMAGE,
            storage_secret=os.environ.get(contract.ENV_STORAGE_SECRET) or None,
            log_level=os.environ.get(contract.ENV_LOG_LEVEL) or "INFO",
            resync_seconds=float(os.environ.get(contract.ENV_RESYNC_SECONDS) or 10.0),
        )
