"""The MemoryTuningJob spec: the single source of truth for the CRD, the CLI and the SDK.

A job is a Kubernetes-shaped document::

    apiVersion: memtune.dev/v1alpha1
    kind: MemoryTuningJob
    metadata: {name: nba-sql}
    spec:
      baseModel: smollm2-135m-instruct
      dataset: {uri: facts.jsonl}
      finetuneArgs: {max_steps: 500, index_method: IndexFlatL2}
      gpuConfig: {gpus: 0, nodes: 1}
      output: {uri: runs/nba-sql}

`finetuneArgs` keeps Lamini's snake_case names and defaults exactly, so a Lamini user's dict drops in.
memtune's own knobs (which Lamini does not have) live under `memory`; cluster placement under `trainer`.

A *step* is one optimizer update. Each step consumes `gradient_accumulation_steps` micro-batches of
`memory.batchSize` examples, i.e. `batchSize * gradient_accumulation_steps` examples per step.

Validation is strict: unknown keys, wrong types (a string where a number belongs) and out-of-range values
are all rejected at once, in one `SpecError` that names every offending field by its path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memtune import documents
from memtune.redact import credential_in_value, has_userinfo, is_credential_name

API_GROUP = "memtune.dev"
API_VERSION = "v1alpha1"
KIND = "MemoryTuningJob"
PLURAL = "memorytuningjobs"
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"

IndexMethod = Literal["IndexFlatL2", "IndexIVFFlat", "IndexIVFPQ", "IndexHNSWFlat", "IndexHNSWPQ", "IndexPQ"]
Optimizer = Literal["adafactor", "adamw"]
Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"]

# DNS-1035 label: PyTorchJob names must be one, and children are named after the job.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Room left in a 63-character name for suffixes such as "-12-master-0".
MAX_JOB_NAME_LENGTH = 40
# faiss takes the seed as a C int.
MAX_SEED = 2**31 - 1
# Decoder layers a memory may name (more than any causal LM has).
MAX_LAYERS = 512
# Kubernetes stores these durations as int32 seconds.
MAX_SECONDS = 2**31 - 1
# Bounds on strings and lists that CEL rules read: the API server budgets a rule's cost by these lengths.
MAX_URI_LENGTH = 2048
MAX_ENV_VARS = 128
MAX_ENV_VALUE_LENGTH = 32768


class SpecError(ValueError):
    """A manifest or argument set is invalid. `problems` holds one `(field path, message)` per issue."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "spec"):
        self.problems = problems
        lines = "\n".join(f"  - {path}: {message}" for path, message in problems)
        super().__init__(f"invalid {source} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")


class ModelError(RuntimeError):
    """`spec.baseModel` names no model that can be found, fetched or loaded (raised by the trainer, shown by CLIs)."""


class _Strict(BaseModel):
    """Base for every spec model: unknown keys and type coercions are errors, not silent fixes."""

    model_config = ConfigDict(
        extra="forbid", strict=True, populate_by_name=True, validate_default=True, allow_inf_nan=False
    )


def _no_userinfo(value: str | None) -> str | None:
    """URIs may not carry credentials: they are copied into status, logs and job.yaml. Never echo the value."""
    if value is not None and has_userinfo(value):
        raise ValueError("must not embed credentials (user:password@ in the URI); use spec.storage.secretRef")
    return value


class FinetuneArgs(_Strict):
    """Lamini's finetune_args, with Lamini's names and defaults."""

    max_steps: int = Field(100, ge=1, le=1_000_000, description="Optimizer updates to run.")
    learning_rate: float = Field(
        9.0e-4,
        gt=0,
        le=1.0,
        description="Learning rate on Lamini's scale, where its recipes live (3e-4 for tens of facts, 9e-5 for 800+, "
        "1e-5 for text-to-SQL). The experts step at 0.16 / r_value * (learning_rate / 9e-4) ** 0.5 (1e-2 at rank 16 "
        "and the default), and each update carries enough facts for every fact to converge within max_steps "
        "(memtune/trainer/tuning/schedule.py).",
    )
    gradient_accumulation_steps: int = Field(
        2, ge=1, le=1024, description="Micro-batches accumulated into one optimizer step."
    )
    max_finetuning_examples: int | None = Field(
        None, ge=1, le=100_000_000, description="Use at most this many examples (first N); default: the whole dataset."
    )
    save_steps: int = Field(60, ge=1, le=1_000_000, description="Write a checkpoint every this many steps.")
    max_length: int = Field(2048, ge=16, le=8192, description="Token limit of prompt + answer; a power of two.")
    optim: Optimizer = Field("adafactor", description="Optimizer of the expert weights.")
    r_value: int = Field(64, ge=1, le=1024, description="Rank of each memory expert's low-rank adapter.")
    index_method: IndexMethod = Field("IndexIVFPQ", description="faiss index type that routes inputs to experts.")
    index_k: int = Field(2, ge=1, le=64, description="Experts mixed for each input (top-k of the index).")
    index_max_size: int = Field(
        65536, ge=1, le=100_000_000, description="Cap on the number of memory experts; facts share experts above it."
    )
    index_pq_m: int = Field(8, ge=1, le=1024, description="PQ: sub-quantizers per key.")
    index_pq_nbits: int = Field(8, ge=1, le=16, description="PQ: bits per sub-quantizer code.")
    index_ivf_nlist: int = Field(2048, ge=1, le=1_000_000, description="IVF: number of inverted lists.")
    index_ivf_nprobe: int = Field(48, ge=1, le=1_000_000, description="IVF: lists visited per query.")
    index_hnsw_m: int = Field(32, ge=2, le=512, description="HNSW: neighbours per node.")
    index_hnsw_efConstruction: int = Field(16, ge=1, le=4096, description="HNSW: search width while building.")
    index_hnsw_efSearch: int = Field(8, ge=1, le=4096, description="HNSW: search width while querying.")

    @field_validator("max_length")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two (16 ... 8192), got {value}")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> FinetuneArgs:
        if self.index_ivf_nprobe > self.index_ivf_nlist:
            raise ValueError(
                f"index_ivf_nprobe ({self.index_ivf_nprobe}) must not exceed index_ivf_nlist ({self.index_ivf_nlist})"
            )
        if self.index_k > self.index_max_size:
            raise ValueError(f"index_k ({self.index_k}) must not exceed index_max_size ({self.index_max_size})")
        return self


class GPUConfig(_Strict):
    """Lamini's gpu_config: how many machines and accelerators train the job."""

    gpus: int = Field(1, ge=0, le=64, description="GPUs per node; 0 trains on CPUs only.")
    nodes: int = Field(1, ge=1, le=512, description="Nodes (pods) taking part in data-parallel training.")


class DatasetRef(_Strict):
    """Where the training pairs come from: a JSONL/JSON file (`uri`) or an uploaded dataset (`id`)."""

    uri: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_URI_LENGTH,
        description="JSONL or JSON-array file: a plain path, file:// or s3:// URI.",
    )
    id: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Content address (sha256) of a dataset stored by upload_data."
    )
    store: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_URI_LENGTH,
        description="Root URI of the dataset store that holds `id` (default: ~/.cache/memtune).",
    )
    inputKey: str = Field("input", min_length=1, description="Field of each record holding the question.")
    outputKey: str = Field("output", min_length=1, description="Field of each record holding the answer.")

    _credentials_free = field_validator("uri", "store")(_no_userinfo)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DatasetRef:
        if (self.uri is None) == (self.id is None):
            raise ValueError("set exactly one of dataset.uri and dataset.id")
        return self


class OutputRef(_Strict):
    uri: str = Field(
        ...,
        min_length=1,
        max_length=MAX_URI_LENGTH,
        description="Folder or s3:// prefix; each run writes a sub-folder of it.",
    )

    _credentials_free = field_validator("uri")(_no_userinfo)


class MemoryConfig(_Strict):
    """memtune's own knobs for the Mixture of Memory Experts (Lamini has no equivalent)."""

    expertLayers: list[Annotated[int, Field(ge=0, le=MAX_LAYERS - 1)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_LAYERS,
        description="Decoder layers (0-based) that carry memory experts; default: the last numExpertLayers.",
    )
    numExpertLayers: int | None = Field(
        None,
        ge=1,
        le=MAX_LAYERS,
        description="How many final layers carry experts when expertLayers is not set; default: 8, at most half the "
        "depth.",
    )
    keyLayer: int | None = Field(
        None,
        ge=0,
        le=MAX_LAYERS - 2,
        description="Layer whose hidden states form the routing key; default: 40% of the depth, kept below the first "
        "expert layer.",
    )
    gate: Literal["calibrated", "always"] = Field(
        "calibrated",
        description="calibrated: experts apply only when the key is close enough to a trained one; always: never gate.",
    )
    distanceThreshold: float | None = Field(
        None,
        gt=0,
        le=4,
        description="Gate distance (squared L2 of normalised keys, so at most 4); default: calibrated from the data.",
    )
    anchorShare: float = Field(
        0.6,
        ge=0,
        le=1,
        description="The calibrated gate's entity check: a trained question may answer a prompt only when their anchor "
        "agreement reaches this share (its anchors in the prompt, against its anchors missing and other questions' "
        "anchors present; anchors are the names, codes and rare words the base model finds surprising, and every "
        "number); 0 leaves the distance alone to decide.",
    )
    temperature: float = Field(
        0.002,
        gt=0,
        le=10,
        description="Softmax temperature of the top-k mixing weights over key distances; small keeps distinct facts' "
        "experts from interfering, large blends shared experts.",
    )
    stopLoss: float = Field(
        0.02,
        ge=0,
        le=100,
        description="A fact leaves the working set once its answer loss is below this; training ends early when "
        "every fact is below it (0: always run max_steps).",
    )
    batchSize: int = Field(16, ge=1, le=4096, description="Examples per micro-batch.")
    expertDtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description="How the run stores the experts' factors; training keeps float32 masters and reports the recall "
        "of the stored (rounded) weights. bfloat16 halves the bytes per fact.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of every random choice (initialisation, sampling, clustering)."
    )
    parent: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_URI_LENGTH,
        description="Grow this memory from an earlier one: a run folder or a job output (its newest committed run), "
        "local or s3://, verified by checksum. Only questions that are new or whose answer changed are trained; the "
        "parent's other experts are kept byte for byte.",
    )
    mode: Literal["replace", "append"] = Field(
        "replace",
        description="With a parent: replace forgets the parent's questions that the dataset no longer holds (their "
        "experts, keys and index entries are removed); append keeps them.",
    )

    _credentials_free = field_validator("parent")(_no_userinfo)

    @model_validator(mode="after")
    def _append_needs_parent(self) -> MemoryConfig:
        if self.mode == "append" and self.parent is None:
            raise ValueError("mode 'append' adds to a parent memory: set memory.parent as well")
        return self

    @model_validator(mode="after")
    def _key_below_experts(self) -> MemoryConfig:
        if self.keyLayer is not None and self.expertLayers and self.keyLayer >= min(self.expertLayers):
            raise ValueError(
                f"keyLayer ({self.keyLayer}) must be below every expert layer (lowest: {min(self.expertLayers)}), "
                "so that experts never move the keys"
            )
        return self


class SecretRef(_Strict):
    name: str = Field(..., min_length=1, max_length=253, description="Name of a Secret in the job's namespace.")


class StorageConfig(_Strict):
    """Credentials of the object storage holding datasets, models and outputs: by Secret reference only."""

    secretRef: SecretRef | None = Field(
        None,
        description="Secret whose keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION) "
        "become the trainer's environment.",
    )


class KeyRef(_Strict):
    name: str = Field(..., min_length=1)
    key: str = Field(..., min_length=1)


class EnvVarSource(_Strict):
    secretKeyRef: KeyRef | None = None
    configMapKeyRef: KeyRef | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> EnvVarSource:
        if (self.secretKeyRef is None) == (self.configMapKeyRef is None):
            raise ValueError("set exactly one of secretKeyRef and configMapKeyRef")
        return self


class EnvVar(_Strict):
    name: str = Field(..., max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = Field(
        None,
        max_length=MAX_ENV_VALUE_LENGTH,
        description="A literal value; never a credential (use valueFrom.secretKeyRef).",
    )
    valueFrom: EnvVarSource | None = None

    @field_validator("value")
    @classmethod
    def _no_literal_credential(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        if is_credential_name(info.data.get("name") or ""):
            raise ValueError("a credential may not be written in the spec: use valueFrom.secretKeyRef")
        if kind := credential_in_value(value):
            raise ValueError(f"holds {kind}; credentials come from a Secret (valueFrom.secretKeyRef)")
        return value

    @model_validator(mode="after")
    def _one_value(self) -> EnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise ValueError("set at most one of value and valueFrom")
        if self.valueFrom and self.valueFrom.configMapKeyRef and is_credential_name(self.name):
            raise ValueError(f"{self.name} is a credential: take it from a Secret (valueFrom.secretKeyRef)")
        return self


class LocalObjectReference(_Strict):
    name: str = Field(..., min_length=1)


_K8S_OBJECT = {"x-kubernetes-preserve-unknown-fields": True}


class TrainerPodConfig(_Strict):
    """Placement and shape of the training pods on a cluster (ignored by local runs)."""

    image: str | None = Field(None, min_length=1, description="Trainer image; default: the operator's setting.")
    resources: dict[str, Any] | None = Field(
        None, json_schema_extra=_K8S_OBJECT, description="Container resources (GPUs are added from gpuConfig)."
    )
    nodeSelector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(None, json_schema_extra={"items": _K8S_OBJECT})
    affinity: dict[str, Any] | None = Field(None, json_schema_extra=_K8S_OBJECT)
    priorityClassName: str | None = None
    imagePullSecrets: list[LocalObjectReference] | None = None
    serviceAccountName: str | None = None
    env: list[EnvVar] | None = Field(
        None, max_length=MAX_ENV_VARS, description="Extra environment; credentials only through valueFrom.secretKeyRef."
    )


class MemoryTuningJobSpec(_Strict):
    baseModel: str = Field(
        DEFAULT_BASE_MODEL,
        min_length=1,
        max_length=MAX_URI_LENGTH,
        description="Alias, local folder, or s3:// folder of a Hugging Face model.",
    )
    dataset: DatasetRef
    finetuneArgs: FinetuneArgs = Field(default_factory=FinetuneArgs)
    gpuConfig: GPUConfig = Field(default_factory=GPUConfig)
    output: OutputRef
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    # Cluster fields: the operator reads them, local runs ignore them.
    backend: Literal["auto", "trainjob", "pytorchjob", "job"] = Field(
        "auto",
        description="auto: a Kubeflow Trainer v2 TrainJob where its CRD is installed, else a Kubeflow PyTorchJob, "
        "else a batch/v1 Job (single node only).",
    )
    trainer: TrainerPodConfig = Field(default_factory=TrainerPodConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    suspend: bool = Field(False, description="Hold (or pause) the training pods.")
    backoffLimit: int = Field(3, ge=0, le=100, description="Retries after a failed attempt.")
    activeDeadlineSeconds: int | None = Field(
        None, ge=1, le=MAX_SECONDS, description="Fail the job once it has run this long."
    )
    ttlSecondsAfterFinished: int | None = Field(
        None, ge=0, le=MAX_SECONDS, description="Delete the children (never the job) this long after it finishes."
    )
    queueName: str | None = Field(None, min_length=1, description="Kueue queue, set as kueue.x-k8s.io/queue-name.")

    _credentials_free = field_validator("baseModel")(_no_userinfo)

    @model_validator(mode="after")
    def _single_node_job(self) -> MemoryTuningJobSpec:
        if self.backend == "job" and self.gpuConfig.nodes != 1:
            raise ValueError(
                "backend 'job' runs a single node: set gpuConfig.nodes to 1 or use backend 'trainjob' or 'pytorchjob'"
            )
        return self


class ObjectMeta(_Strict):
    name: str = Field(..., min_length=1, max_length=MAX_JOB_NAME_LENGTH)
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS_1035.match(value):
            raise ValueError("must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter")
        return value


class MemoryTuningJob(_Strict):
    apiVersion: Literal["memtune.dev/v1alpha1"] = f"{API_GROUP}/{API_VERSION}"
    kind: Literal["MemoryTuningJob"] = KIND
    metadata: ObjectMeta
    spec: MemoryTuningJobSpec


class Condition(_Strict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    lastTransitionTime: str
    observedGeneration: int | None = None


class Progress(_Strict):
    """The trainer's latest step report, as the operator last read it from the rank-0 log."""

    step: int = Field(0, ge=0)
    maxSteps: int = Field(0, ge=0)
    percentage: int | None = Field(None, ge=0, le=100, description="100 * step / maxSteps, rounded down.")
    estimatedRemainingSeconds: int | None = Field(
        None, ge=0, description="(maxSteps - step) at the step rate seen in this attempt; an upper bound (stopLoss)."
    )
    loss: float | None = Field(None, description="Training loss of the latest step.")
    updateTime: str | None = Field(None, description="When the operator read this report.")
    firstStep: int | None = Field(None, ge=0, description="First step seen in this attempt: the step rate's base.")
    firstStepTime: str | None = Field(None, description="When firstStep was seen.")


class MemoryTuningJobStatus(_Strict):
    """What the operator reports back on the job (the CRD's status subresource)."""

    phase: Phase | None = None
    conditions: list[Condition] | None = None
    observedGeneration: int | None = None
    startTime: str | None = None
    completionTime: str | None = None
    attempt: int | None = Field(None, ge=0, description="Current attempt; children are named {job}-{attempt}.")
    backend: Literal["TrainJob", "PyTorchJob", "Job"] | None = Field(
        None, description="Kind of the children: chosen once, for every attempt."
    )
    suspendedSeconds: int | None = Field(
        None,
        ge=0,
        description="Seconds held (suspended, or waiting for Kueue) since startTime: not counted against "
        "activeDeadlineSeconds.",
    )
    suspendedSince: str | None = Field(None, description="Start of the current hold, if held now.")
    progress: Progress | None = None
    metrics: dict[str, float] | None = Field(None, description="Final metrics reported by the trainer.")
    artifactsUri: str | None = None


# --------------------------------------------------------------------------------------------------------------
# Loading and error reporting


def _format_location(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or prefix


def problems_of(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into `(field path, message)` pairs, e.g. `spec.finetuneArgs.max_steps`."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        problems.append((_format_location(prefix, tuple(item["loc"])), message))
    return problems


def parse_job(document: Any, source: str = "MemoryTuningJob") -> MemoryTuningJob:
    """Validate a manifest already parsed into Python objects; raise `SpecError` listing every problem."""
    if not isinstance(document, dict):
        raise SpecError([("(document)", f"expected a mapping, got {type(document).__name__}")], source)
    try:
        documents.check_document(document)
    except documents.DocumentError as error:
        raise SpecError(error.problems, source) from None
    try:
        return MemoryTuningJob.model_validate(document)
    except ValidationError as error:
        raise SpecError(problems_of(error), source) from None


def parse_finetune_args(args: dict[str, Any] | None) -> FinetuneArgs:
    """Validate a Lamini-style finetune_args dict (SDK and CLI)."""
    try:
        return FinetuneArgs.model_validate(args or {})
    except ValidationError as error:
        raise SpecError(problems_of(error, "finetune_args"), "finetune_args") from None


def parse_gpu_config(config: dict[str, Any] | None) -> GPUConfig:
    try:
        return GPUConfig.model_validate(config or {})
    except ValidationError as error:
        raise SpecError(problems_of(error, "gpu_config"), "gpu_config") from None


def load_yaml(text: str, source: str = "manifest") -> Any:
    """One YAML document, bounded and free of duplicate keys (`memtune.documents`); SpecError otherwise."""
    try:
        return documents.load_yaml(text)
    except documents.DocumentError as error:
        raise SpecError(error.problems, source) from None


def load_job_file(path: str | Path) -> MemoryTuningJob:
    """Read and validate a manifest file. Relative local paths are kept; `resolve_local_paths` anchors them.

    Every way the file can be wrong is a SpecError naming the file and the field or line: unreadable, larger than
    a ConfigMap holds, not UTF-8, not YAML, a repeated key, an alias bomb, or a value out of range."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(documents.MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise SpecError([("(file)", f"cannot read it ({error.strerror or error})")], str(path)) from None
    if len(raw) > documents.MAX_MANIFEST_BYTES:
        message = f"larger than {documents.MAX_MANIFEST_BYTES} bytes (what a ConfigMap holds)"
        raise SpecError([("(file)", message)], str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        problem = f"not UTF-8 text ({error.reason} at byte {error.start})"
        raise SpecError([(f"(file) line {line}", problem)], str(path)) from None
    return parse_job(load_yaml(text, str(path)), str(path))


def is_remote(uri: str) -> bool:
    """True for object-storage URIs (s3://, gs://, ...); False for plain paths and file://."""
    return "://" in uri and not uri.startswith("file://")


def resolve_local_paths(job: MemoryTuningJob, base_dir: str | Path) -> MemoryTuningJob:
    """Anchor relative local paths of a manifest (dataset, output, parent memory, base model folder) at `base_dir`."""
    base = Path(base_dir)

    def anchor(uri: str | None) -> str | None:
        if uri is None or is_remote(uri):
            return uri
        local = uri.removeprefix("file://")
        return uri if Path(local).expanduser().is_absolute() else str((base / local).resolve())

    spec = job.spec
    updates: dict[str, Any] = {
        "dataset": spec.dataset.model_copy(
            update={"uri": anchor(spec.dataset.uri), "store": anchor(spec.dataset.store)}
        ),
        "output": spec.output.model_copy(update={"uri": anchor(spec.output.uri)}),
        "memory": spec.memory.model_copy(update={"parent": anchor(spec.memory.parent)}),
    }
    model_path = spec.baseModel
    if not is_remote(model_path) and (model_path.startswith((".", "/", "~", "file://")) or "/" in model_path):
        candidate = anchor(model_path)
        if candidate and Path(candidate).expanduser().exists():
            updates["baseModel"] = candidate
    return job.model_copy(update={"spec": spec.model_copy(update=updates)})


def local_paths_in(spec: MemoryTuningJobSpec) -> list[tuple[str, str]]:
    """Fields that point at this machine's disk, which a cluster pod cannot read."""
    found = []
    if spec.dataset.uri is not None and not is_remote(spec.dataset.uri):
        found.append(("spec.dataset.uri", spec.dataset.uri))
    if spec.dataset.id is not None and spec.dataset.store is not None and not is_remote(spec.dataset.store):
        found.append(("spec.dataset.store", spec.dataset.store))
    if not is_remote(spec.output.uri):
        found.append(("spec.output.uri", spec.output.uri))
    if spec.memory.parent is not None and not is_remote(spec.memory.parent):
        found.append(("spec.memory.parent", spec.memory.parent))
    return found
