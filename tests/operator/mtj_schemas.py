"""Validate what the operator sends against the schemas a real cluster would apply.

PyTorchJob: the Kubeflow v1.9.4 CRD vendored in tests/schemas plus the admission-webhook rules listed in its
SOURCE.md. TrainJob and ClusterTrainingRuntime: the Kubeflow Trainer v2.3.0 CRDs (OpenAPI schema through
jsonschema, their CEL rules through cel-python, as an API server applies them on create), plus the torch
plugin's webhook checks; a TrainJob's pods are composed with the chart's runtime (`controllers.trainjob_pod`)
and checked as pods. Built-in kinds (ConfigMap, batch/v1 Job, every pod template): kubernetes-validate.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import yaml

from tests.chart.render import render

from .controllers import trainjob_pod

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"  # vendored: see tests/schemas/SOURCE.md
PYTORCHJOB_CRD = SCHEMAS / "kubeflow.org_pytorchjobs.yaml"
TRAINJOB_CRD = SCHEMAS / "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME_CRD = SCHEMAS / "trainer.kubeflow.org_clustertrainingruntimes.yaml"
# Trainer's torch plugin refuses these in a TrainJob's trainer.env (constants.TorchRunReservedEnvNames).
TORCHRUN_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
_CEL = celpy.Environment()
K8S_VERSION = "1.36.0"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@functools.cache
def _pytorchjob_schema() -> dict[str, Any]:
    crd = yaml.safe_load(PYTORCHJOB_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def _crd_schema(path: Path) -> dict[str, Any]:
    (version,) = yaml.safe_load(path.read_text())["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def cel_failures(schema: dict[str, Any], new: Any, path: str = "") -> list[str]:
    """Every x-kubernetes-validations rule that fails on create (transition rules need an old object: skipped)."""
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        result = _CEL.program(_CEL.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(new)})
        if isinstance(result, Exception) or not bool(result):
            failures.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(new, dict):
        for key, child in (schema.get("properties") or {}).items():
            if key in new:
                failures += cel_failures(child, new[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, child in new.items():
                failures += cel_failures(extra, child, f"{path}.{key}")
    if isinstance(new, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(new):
            failures += cel_failures(schema["items"], item, f"{path}[{index}]")
    return failures


def validate_crd_object(obj: dict[str, Any], crd: Path) -> None:
    """Raise AssertionError listing every schema and CEL problem of `obj` under the CRD at `crd`."""
    schema = _crd_schema(crd)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft4Validator(schema).iter_errors(obj)]
    errors += cel_failures(schema, obj)
    assert not errors, errors


@functools.cache
def chart_runtime() -> dict[str, Any]:
    """The ClusterTrainingRuntime the chart ships, rendered by Helm."""
    objects = render({"trainJob": {"runtime": {"install": "always"}}})
    (runtime,) = [obj for obj in objects if obj["kind"] == "ClusterTrainingRuntime"]
    return runtime


def validate_trainjob(obj: dict[str, Any]) -> None:
    """The vendored TrainJob CRD, the torch plugin's webhook checks, and the pods it makes with the chart's
    runtime as valid Kubernetes pod templates."""
    validate_crd_object(obj, TRAINJOB_CRD)
    trainer = obj["spec"]["trainer"]
    reserved = TORCHRUN_RESERVED_ENV & {env["name"] for env in trainer.get("env") or []}
    assert not reserved, f"spec.trainer.env must not have reserved envs: {sorted(reserved)}"
    assert trainer.get("numProcPerNode", 1) >= 1 and trainer.get("numNodes", 1) >= 1
    runtime = chart_runtime()
    assert obj["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": runtime["metadata"]["name"]
    }  # fmt: skip
    template = trainjob_pod(obj, runtime)
    validate_builtin({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})


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
