"""Pod Security "restricted" for the trainer pods, and the few writable places their read-only root leaves.

The trainer image runs as uid/gid 65532 (see the Dockerfile) and bakes the converted default model under
`MEMTUNE_HOME=/opt/memtune`, which a pod only reads. Everything a pod writes goes to an emptyDir
(docs/trainer-contract.md, "What a trainer pod may write"):

    /tmp        HOME and TMPDIR: Python's tempfile, and the caches torch, Hugging Face and matplotlib keep in $HOME
    /scratch    MEMTUNE_SCRATCH: downloaded datasets and models, the run folder before it is uploaded
    /dev/shm    GPU jobs only, memory-backed: torch DataLoader workers and NCCL exchange tensors through it

`/dev/termination-log` stays writable too: the kubelet bind-mounts it whatever the root filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memtune import contract

Manifest = dict[str, Any]

# The trainer image's user (Dockerfile); forced here so an image without a USER line still runs unprivileged.
TRAINER_UID = 65532


@dataclass(frozen=True)
class WritableDir:
    volume: str
    """Name of the emptyDir volume (unique in the pod, next to the spec's ConfigMap volume)."""
    path: str
    """Where the container sees it."""
    medium: str | None = None
    """`Memory` for a tmpfs, whose bytes count against the container's memory limit; None: node disk."""


TMP = WritableDir("memtune-tmp", "/tmp")  # noqa: S108 - mount points of emptyDirs, not files opened here
SCRATCH = WritableDir("memtune-scratch", contract.SCRATCH_DIR)
SHM = WritableDir("memtune-shm", "/dev/shm", medium="Memory")  # noqa: S108


def writable_dirs(gpus: int) -> list[WritableDir]:
    """The emptyDirs of one trainer pod: /dev/shm only with GPUs (the runtime's default is 64 MiB, too small)."""
    return [TMP, SCRATCH, SHM] if gpus else [TMP, SCRATCH]


def writable_env() -> list[Manifest]:
    """Point every tool that writes at an emptyDir; set before `spec.trainer.env`, which may override it."""
    return [
        {"name": "HOME", "value": TMP.path},
        {"name": "TMPDIR", "value": TMP.path},
        {"name": contract.ENV_SCRATCH, "value": SCRATCH.path},
    ]


def volumes(dirs: list[WritableDir]) -> list[Manifest]:
    return [{"name": d.volume, "emptyDir": {"medium": d.medium} if d.medium else {}} for d in dirs]


def volume_mounts(dirs: list[WritableDir]) -> list[Manifest]:
    return [{"name": d.volume, "mountPath": d.path} for d in dirs]


def pod_security_context() -> Manifest:
    """Identity and seccomp for every container of the pod; fsGroup makes the emptyDirs the trainer's own."""
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    """No privilege escalation, no capabilities, nothing written outside the emptyDirs."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
