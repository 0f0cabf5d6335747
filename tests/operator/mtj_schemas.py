"""Validate what the operator sends against the schemas a real cluster would apply.

PyTorchJob: the Kubeflow v1.9.4 CRD vendored in tests/schemas plus the admission-webhook rules listed in its
SOURCE.md. Built-in kinds (ConfigMap, batch/v1 Job, the pod templates inside a PyTorchJob): kubernetes-validate.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"  # vendored: see tests/schemas/SOURCE.md
PYTORCHJOB_CRD = SCHEMAS / "kubeflow.org_pytorchjobs.yaml"
K8S_VERSION = "1.36.0"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@functools.cache
def _pytorchjob_schema() -> dict[str, Any]:
    crd = yaml.safe_load(PYTORCHJOB_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def validate_builtin(obj: dict[str, Any]) -> None:
    """Raise if a built-in object (ConfigMap, Job, ...) is not valid for Kubernetes, unknown fields included."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def validate_pytorchjob(obj: dict[str, Any]) -> None:
    """Raise AssertionError naming the broken rule: CRD schema, then the webhook's own checks."""
    errors = [error.message for error in jsonschema.Draft4Validator(_pytorchjob_schema()).iter_errors(obj)]
    assert not errors, errors
    assert _DNS_1035.match(obj["metadata"]["name"]), "PyTorchJob name must be a DNS-1035 label"
    replicas = obj["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1, "Master replicas must be exactly 1"
    if "Worker" in replicas:
        assert replicas["Worker"]["replicas"] >= 1, "a single-node job must omit the Worker key"
    for kind, replica in replicas.items():
        names = [container["name"] for container in replica["template"]["spec"]["containers"]]
        assert "pytorch" in names, f"{kind}: one container must be named pytorch"
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": replica["template"]}
        validate_builtin(pod)
