"""The trainer contract: constants shared by the operator (which starts pods) and the trainer (which runs in them).

Torch-free and Kubernetes-free so both sides import it; `docs/trainer-contract.md` explains each one.
"""

from __future__ import annotations

# How the spec reaches the pod: the whole MemoryTuningJob as YAML, mounted from a ConfigMap.
SPEC_MOUNT_DIR = "/etc/memtune"
SPEC_FILE_NAME = "job.yaml"
SPEC_PATH = f"{SPEC_MOUNT_DIR}/{SPEC_FILE_NAME}"

# The training container; Kubeflow's PyTorchJob requires this exact name, Kubeflow Trainer v2 requires `node`.
CONTAINER_NAME = "pytorch"
TRAINJOB_CONTAINER_NAME = "node"
CONTAINER_NAMES = (CONTAINER_NAME, TRAINJOB_CONTAINER_NAME)
# Every backend runs this; a pod asked for several processes starts them itself (memtune.trainer.tuning.pod).
TRAINER_COMMAND = ["python", "-m", "memtune.trainer", "--spec", SPEC_PATH]
# The ClusterTrainingRuntime the chart ships for TrainJobs (templates/trainingruntime.yaml).
TRAINJOB_RUNTIME = "memtune-torch"

# Keys of the storage Secret handed to the trainer. PyTorchJob and Job pods get the whole Secret (envFrom); a
# TrainJob can only carry single keys (secretKeyRef), so it gets these, the first two required, the rest optional.
STORAGE_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION",
)  # fmt: skip
STORAGE_SECRET_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

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
ENV_METRICS_PORT = "MEMTUNE_METRICS_PORT"
ENV_TRAINJOB_RUNTIME = "MEMTUNE_TRAINJOB_RUNTIME"
ENV_TRAINER_SERVICE_ACCOUNT = "MEMTUNE_TRAINER_SERVICE_ACCOUNT"
ENV_ALLOWED_IMAGES = "MEMTUNE_ALLOWED_IMAGES"  # comma-separated fnmatch patterns
ENV_ALLOWED_SERVICE_ACCOUNTS = "MEMTUNE_ALLOWED_SERVICE_ACCOUNTS"  # comma-separated names

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
ROLE_NODE = "node"  # every pod of a TrainJob: the one with completion index 0 is rank 0
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
BACKEND_LABEL = "memtune.dev/backend"  # on each attempt's ConfigMap: the kind its child is (or will be)
# Set by Kubernetes on the pods of an Indexed Job (a TrainJob's JobSet): label since 1.28, annotation always.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def child_name(job: str, attempt: int) -> str:
    """Name of the PyTorchJob or Job of one attempt: retries never reuse a name."""
    return f"{job}-{attempt}"


def spec_config_map_name(job: str, attempt: int) -> str:
    """Name of the ConfigMap that carries the spec of one attempt."""
    return f"{child_name(job, attempt)}-spec"


def is_rank0_pod(metadata: dict) -> bool:
    """Whether a trainer pod (its metadata) is rank 0's: role master, or the TrainJob node with completion index 0."""
    labels = metadata.get("labels") or {}
    role = labels.get(ROLE_LABEL)
    if role == ROLE_MASTER:
        return True
    index = labels.get(COMPLETION_INDEX, (metadata.get("annotations") or {}).get(COMPLETION_INDEX))
    return role == ROLE_NODE and index == "0"


def pod_selector(job: str, attempt: int, role: str | None = None) -> str:
    """Label selector of the trainer pods of one attempt (only its rank-0 pod with `role=ROLE_MASTER`)."""
    selector = f"{JOB_LABEL}={job},{ATTEMPT_LABEL}={attempt}"
    return f"{selector},{ROLE_LABEL}={role}" if role else selector
