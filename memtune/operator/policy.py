"""What a job may choose for its pods, decided by the cluster admin's settings (chart values), not by the job.

Whoever may create a MemoryTuningJob runs the trainer image as a pod in that namespace. The image and the
service account are the two choices that change what such a pod can do beyond training, so a job may set them
only to values the admin listed (docs/cluster.md, "Who may do what").
"""

from __future__ import annotations

import fnmatch

from memtune.operator.settings import OperatorSettings
from memtune.spec import MemoryTuningJob


def violations(job: MemoryTuningJob, settings: OperatorSettings) -> list[tuple[str, str]]:
    """(field, why) for every choice of `job` the settings do not allow; [] when it may run."""
    found = []
    trainer = job.spec.trainer
    image = trainer.image
    allowed_image = image is None or image == settings.trainer_image
    if not allowed_image and not any(fnmatch.fnmatchcase(image, pattern) for pattern in settings.allowed_images):
        allowed = ", ".join(settings.allowed_images) or "none: leave it unset for the operator's default"
        found.append(("spec.trainer.image", f"{image!r} is not an allowed image (allowed: {allowed})"))
    account = trainer.serviceAccountName
    allowed_account = account is None or account == settings.trainer_service_account
    if not allowed_account and account not in settings.allowed_service_accounts:
        allowed = ", ".join(settings.allowed_service_accounts) or "none: leave it unset"
        why = f"{account!r} is not an allowed service account (allowed: {allowed})"
        found.append(("spec.trainer.serviceAccountName", why))
    return found
