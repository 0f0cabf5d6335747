"""MemoryModel (memtune.dev/v1alpha1): a served memory on a cluster, and the objects that serve it.

    apiVersion: memtune.dev/v1alpha1
    kind: MemoryModel
    metadata: {name: facts}
    spec:
      source: {jobRef: facts-demo}        # or {uri: s3://bucket/memtune/runs/facts-demo}
      replicas: 2
      apiKeySecretRef: {name: facts-api, key: token}

The operator turns one into a Deployment (pods running `memtune serve` on the job's output, under Pod Security
"restricted", credentials only by Secret reference, ready once /readyz says the memory is verified and loaded)
and a Service; both are owned by the MemoryModel, so deleting it deletes them. Why a resource of its own rather
than `spec.serve` on the job: docs/cluster.md, "Serving".

Torch-free: the operator imports this module.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from memtune import contract as trainer_contract
from memtune import spec as s
from memtune.crd import _schema_of
from memtune.serving import contract

KIND = "MemoryModel"
PLURAL = "memorymodels"
SHORT_NAME = "mm"
MAX_NAME_LENGTH = 50  # a Deployment's pods add "-<hash>-<hash>" to this within 63 characters
SCRATCH_MOUNTS = {"tmp": "/tmp", "scratch": trainer_contract.SCRATCH_DIR}  # noqa: S108 - an emptyDir in a pod
RUNS_CACHE = "/opt/memtune/runs-cache"
"""Where fetched runs go: MEMTUNE_HOME of the image (read-only) + runs-cache, made writable by an emptyDir."""
_RULES_KEY = "x-kubernetes-validations"


class ModelSource(s._Strict):
    jobRef: str | None = Field(
        None, min_length=1, max_length=253, description="A MemoryTuningJob in this namespace: serve its output."
    )
    uri: str | None = Field(
        None, min_length=1, description="A job output or one run folder on object storage (s3://...)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.jobRef is None) == (self.uri is None):
            raise ValueError("set exactly one of source.jobRef and source.uri")
        return self


class MemoryModelSpec(s._Strict):
    source: ModelSource
    replicas: int = Field(1, ge=0, le=64)
    servedModelName: str | None = Field(
        None, min_length=1, description="The `model` clients pass; default: the MemoryModel's name."
    )
    image: str | None = Field(None, min_length=1, description="Server image; default: the operator's trainer image.")
    storage: s.StorageConfig = Field(default_factory=s.StorageConfig)
    apiKeySecretRef: s.KeyRef | None = Field(
        None, description="Secret key holding the bearer key clients must send (MEMTUNE_API_KEY); none: open."
    )
    reloadIntervalSeconds: int = Field(
        contract.DEFAULT_RELOAD_INTERVAL_S, ge=0, le=86400, description="Check for a newer run this often; 0: never."
    )
    maxBatch: int = Field(16, ge=1, le=512, description="Most sequences one pod decodes together.")
    resources: dict[str, Any] | None = Field(None, json_schema_extra=s._K8S_OBJECT, description="Container resources.")
    nodeSelector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(None, json_schema_extra={"items": s._K8S_OBJECT})
    imagePullSecrets: list[s.LocalObjectReference] | None = None
    serviceAccountName: str | None = None


class MemoryModelStatus(s._Strict):
    phase: Literal["Pending", "Ready", "Failed"] | None = None
    message: str | None = None
    observedGeneration: int | None = None
    sourceUri: str | None = Field(None, description="The job output or run the pods serve.")
    replicas: int | None = None
    readyReplicas: int | None = None
    url: str | None = Field(None, description="OpenAI-compatible base URL inside the cluster.")


def parse_model_spec(spec: Any) -> MemoryModelSpec:
    """Validate a MemoryModel's spec; raises SpecError naming each bad field (`spec.source`, ...)."""
    from pydantic import ValidationError

    try:
        return MemoryModelSpec.model_validate(spec)
    except ValidationError as error:
        raise s.SpecError(s.problems_of(error, "spec"), KIND) from None


# --------------------------------------------------------------------------------------------------------------
# The CRD (same derivation as the MemoryTuningJob's, memtune/crd.py)

_SOURCE_RULE = {
    "rule": "has(self.jobRef) != has(self.uri)",
    "message": "set exactly one of source.jobRef and source.uri",
}


def build_crd() -> dict[str, Any]:
    spec = _schema_of(MemoryModelSpec)
    spec["properties"]["source"][_RULES_KEY] = [_SOURCE_RULE]
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": _schema_of(MemoryModelStatus),
        },
        _RULES_KEY: [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters",
            },
            {
                "rule": f"self.metadata.name.matches('{s._DNS_1035.pattern}')",
                "message": "metadata.name must be a DNS-1035 label (it names a Service)",
            },
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{s.API_GROUP}"},
        "spec": {
            "group": s.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["memtune"],
            },
            "versions": [
                {
                    "name": s.API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
                    },
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = (
        "# Generated by memtune.serving.resource.crd_yaml() from memtune/serving/resource.py: do not edit by hand.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


# --------------------------------------------------------------------------------------------------------------
# What the operator creates for one MemoryModel

LABEL = "memtune.dev/memorymodel"


def labels(name: str) -> dict[str, str]:
    return {LABEL: name, "app.kubernetes.io/name": "memtune-server", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "memtune-operator"}  # fmt: skip


def service_url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc:{contract.PORT}/v1"


def deployment(
    name: str, namespace: str, spec: MemoryModelSpec, source_uri: str, *, image: str, storage_secret: str | None
) -> dict[str, Any]:
    """The Deployment serving `source_uri`: restricted pod, read-only root, credentials by Secret reference,
    readiness = /readyz (the memory verified and loaded), liveness = /healthz."""
    command = contract.serve_command(
        source_uri,
        name=spec.servedModelName or name,
        reload_interval_s=spec.reloadIntervalSeconds,
        max_batch=spec.maxBatch,
    )
    env: list[dict[str, Any]] = [
        {"name": trainer_contract.ENV_SCRATCH, "value": trainer_contract.SCRATCH_DIR},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    if spec.apiKeySecretRef is not None:
        ref = spec.apiKeySecretRef
        env.append({"name": contract.ENV_API_KEY, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    container: dict[str, Any] = {
        "name": contract.CONTAINER_NAME,
        "image": image,
        "command": command,
        "env": env,
        "ports": [{"name": contract.PORT_NAME, "containerPort": contract.PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": contract.READY_PATH, "port": contract.PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
        # Fetching and verifying a memory from object storage can take minutes: liveness waits for startup.
        "startupProbe": {
            "httpGet": {"path": contract.HEALTH_PATH, "port": contract.PORT_NAME},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": contract.HEALTH_PATH, "port": contract.PORT_NAME},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": volume, "mountPath": path} for volume, path in SCRATCH_MOUNTS.items()]
        + [{"name": "runs-cache", "mountPath": RUNS_CACHE}],
    }
    secret = spec.storage.secretRef.name if spec.storage.secretRef else storage_secret
    if secret:  # credentials only by reference: the operator never reads the Secret
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    if spec.resources:
        container["resources"] = spec.resources
    pod: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": volume, "emptyDir": {}} for volume in [*SCRATCH_MOUNTS, "runs-cache"]],
        "enableServiceLinks": False,
    }
    for field in ("nodeSelector", "tolerations", "serviceAccountName"):
        if getattr(spec, field):
            pod[field] = getattr(spec, field)
    if spec.imagePullSecrets:
        pod["imagePullSecrets"] = [ref.model_dump() for ref in spec.imagePullSecrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {LABEL: name}},
            # A new pod must be ready (memory verified and loaded) before an old one goes: no dropped capacity.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels(name)}, "spec": pod},
        },
    }


def service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": {
            "selector": {LABEL: name},
            "ports": [
                {"name": contract.PORT_NAME, "port": contract.PORT, "targetPort": contract.PORT_NAME, "protocol": "TCP"}
            ],
        },
    }
