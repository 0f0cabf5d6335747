"""The trainer contract: constants shared by the operator (which starts pods) and the trainer (which runs in them).

Torch-free and Kubernetes-free so both sides import it; `docs/trainer-contract.md` explains each one.
"""

from __future__ import annotations

# How the spec reaches the pod: the whole MemoryTuningJob as YAML, mounted from a ConfigMap.
SPEC_MOUNT_DIR = "/etc/memtune"
SPEC_FILE_NAME = "job.yaml"
SPEC_PATH = f"{SPEC_MOUNT_DIR}/{SPEC_FILE_NAME}"

# The training container; Kubeflow's PyTorchJob requires this exact name.
CONTAINER_NAME = "pytorch"
TRAINER_COMMAND = ["python", "-m", "memtune.trainer", "--spec", SPEC_PATH]

# Environment the operator sets on every trainer pod.
ENV_JOB_NAME = "MEMTUNE_JOB_NAME"
ENV_ATTEMPT = "MEMTUNE_ATTEMPT"

# Writable scratch of a trainer pod (an emptyDir under a read-only root): downloads and the run folder before upload.
ENV_SCRATCH = "MEMTUNE_SCRATCH"
SCRATCH_DIR = "/scratch"

# Operator settings (environment of the operator's own pod).
ENV_TRAINER_IMAGE = "MEMTUNE_TRAINER_IMAGE"
ENV_STORAGE_SECRET = "MEMTUNE_STORAGE_SECRET"  # noqa: S105 - the name of a variable, not a secret
ENV_LOG_LEVEL = "MEMTUNE_LOG_LEVEL"
ENV_RESYNC_SECONDS = "MEMTUNE_RESYNC_SECONDS"

# Progress: one stdout line per report, `MEMTUNE_PROGRESS {"step": 10, "max_steps": 100, "loss": 0.5}`.
PROGRESS_PREFIX = "MEMTUNE_PROGRESS"
# Final result, written by rank 0: `{"artifactsUri": ..., "metrics": {...}}`; Kubernetes copies it into the
# container's `state.terminated.message` (at most 4 KiB), which is how the operator reads it without a bucket.
TERMINATION_LOG = "/dev/termination-log"
# The metric shown in `kubectl get mtj` (fraction of training facts answered exactly).
RECALL_METRIC = "recall"

# Exit codes: 1 means the attempt can never succeed (bad spec, bad data); anything else may be retried.
EXIT_PERMANENT = 1
# EX_TEMPFAIL from sysexits.h: what the trainer exits with when another attempt may succeed (storage still failing).
EXIT_RETRYABLE = 75

# Labels on every child object and pod; `ROLE_LABEL` marks the rank-0 pod whose log and result are read.
JOB_LABEL = "memtune.dev/job"
ATTEMPT_LABEL = "memtune.dev/attempt"
ROLE_LABEL = "memtune.dev/role"
ROLE_MASTER = "master"
ROLE_WORKER = "worker"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def child_name(job: str, attempt: int) -> str:
    """Name of the PyTorchJob or Job of one attempt: retries never reuse a name."""
    return f"{job}-{attempt}"


def spec_config_map_name(job: str, attempt: int) -> str:
    """Name of the ConfigMap that carries the spec of one attempt."""
    return f"{child_name(job, attempt)}-spec"


def pod_selector(job: str, attempt: int, role: str | None = None) -> str:
    """Label selector of the trainer pods of one attempt (only its rank-0 pod with `role=ROLE_MASTER`)."""
    selector = f"{JOB_LABEL}={job},{ATTEMPT_LABEL}={attempt}"
    return f"{selector},{ROLE_LABEL}={role}" if role else selector
