"""MemoryModel without a cluster: the committed CRDs are the generated one, the CRD and pydantic agree on a table
of resources, and the Deployment the operator sends is a valid, restricted pod running the contract's command."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from memtune.serving import contract
from memtune.serving.resource import RUNS_CACHE, build_crd, crd_yaml, deployment, parse_model_spec, service
from memtune.spec import SpecError
from tests.chart.pod_security import restricted_violations
from tests.test_crd import _cel_failures

ROOT = Path(__file__).resolve().parents[2]
FILE = "memorymodels.memtune.dev.yaml"
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
BASE: dict[str, Any] = {
    "apiVersion": "memtune.dev/v1alpha1",
    "kind": "MemoryModel",
    "metadata": {"name": "facts", "namespace": "ml"},
    "spec": {"source": {"jobRef": "facts-demo"}},
}


def test_committed_crds_are_the_generated_one() -> None:
    generated = crd_yaml()
    assert (ROOT / "crds" / FILE).read_text() == generated
    assert (ROOT / "charts" / "memtune" / "crds" / FILE).read_text() == generated
    kubernetes_validate.validate(build_crd(), kubernetes_validate.latest_version(), strict=True)


def _with(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return document


@pytest.mark.parametrize(
    ("document", "valid"),
    [
        (BASE, True),
        (_with("spec.source", {"uri": "s3://runs/facts"}), True),
        (_with("spec.source", {"uri": "s3://runs/facts", "jobRef": "facts"}), False),
        (_with("spec.source", {}), False),
        (_with("spec.replicas", -1), False),
        (_with("spec.replicas", 3), True),
        (_with("spec.maxBatch", 0), False),
        (_with("spec.apiKeySecretRef", {"name": "api"}), False),
        (_with("spec.apiKeySecretRef", {"name": "api", "key": "token"}), True),
        (_with("spec.reloadIntervalSeconds", 0), True),
        (_with("spec.storage", {"secretRef": {"name": "creds"}}), True),
        (_with("spec.resources", {"limits": {"memory": "4Gi"}}), True),
        (_with("spec.unknown", 1), False),
        (_with("metadata.name", "Facts"), False),
    ],
)
def test_crd_and_pydantic_agree(document: dict[str, Any], valid: bool) -> None:
    problems = [e.message for e in jsonschema.Draft4Validator(SCHEMA).iter_errors(document)]
    if not any("additional" in problem.lower() for problem in problems):  # structural schemas prune, not refuse
        problems += _cel_failures(SCHEMA, document, None, "")
    unknown = set(document["spec"]) - set(SCHEMA["properties"]["spec"]["properties"])
    crd_accepts = not problems and not unknown  # the API server prunes unknown fields; the operator refuses them
    try:
        parse_model_spec(document["spec"])
        pydantic_accepts = True
    except SpecError:
        pydantic_accepts = False
    if document["metadata"]["name"] != "facts":  # names are the API server's to check
        pydantic_accepts = crd_accepts
    assert (crd_accepts, pydantic_accepts) == (valid, valid)


def test_the_deployment_is_valid_restricted_and_runs_the_contract_command() -> None:
    spec = parse_model_spec(
        {"source": {"uri": "s3://runs/facts"}, "replicas": 2, "apiKeySecretRef": {"name": "api", "key": "token"},
         "tolerations": [{"key": "gpu", "operator": "Exists"}], "imagePullSecrets": [{"name": "pull"}]}
    )  # fmt: skip
    manifest = deployment("facts", "ml", spec, "s3://runs/facts", image="img:1", storage_secret="creds")
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    kubernetes_validate.validate(service("facts", "ml"), kubernetes_validate.latest_version(), strict=True)
    assert restricted_violations(manifest) == []
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    assert container["command"] == contract.serve_command("s3://runs/facts", name="facts", reload_interval_s=30)
    assert container["envFrom"] == [{"secretRef": {"name": "creds"}}]  # the operator's default Secret
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", "/scratch", RUNS_CACHE} <= mounts  # everything `memtune serve` writes, on emptyDirs
    assert manifest["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_server_image_is_the_trainer_image_with_the_serve_extra() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    trainer = dockerfile[dockerfile.index("AS trainer") :]
    assert '"/src[trainer,serve]"' in trainer
    assert f"MEMTUNE_HOME={Path(RUNS_CACHE).parent}" in trainer  # fetched runs land in the writable emptyDir
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {requirement.split(">")[0] for requirement in extras["serve"]} == {"fastapi", "uvicorn", "prometheus-client"}
