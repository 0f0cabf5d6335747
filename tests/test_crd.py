"""The generated CRD: committed file up to date, structural, and agreeing with spec.py on a table of resources.

The table is checked twice: by the CRD (OpenAPI schema through jsonschema, CEL rules through cel-python, the way
an API server would) and by pydantic (`parse_job`), so the two sources of validation cannot drift apart.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from memtune.crd import build_crd, crd_yaml
from memtune.spec import SpecError, parse_job

CRD_FILE = Path(__file__).parents[1] / "crds" / "memorytuningjobs.memtune.dev.yaml"
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
_CEL = celpy.Environment()

BASE: dict[str, Any] = {
    "apiVersion": "memtune.dev/v1alpha1",
    "kind": "MemoryTuningJob",
    "metadata": {"name": "nba-sql", "namespace": "ml"},
    "spec": {"dataset": {"uri": "s3://data/facts.jsonl"}, "output": {"uri": "s3://runs/nba-sql"}},
}


def _cel_failures(schema: dict[str, Any], new: Any, old: Any, path: str) -> list[str]:
    """Evaluate every x-kubernetes-validations rule on the way down, like the API server does."""
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue  # transition rules run on updates only
        activation = {"self": celpy.json_to_cel(new)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = _CEL.program(_CEL.compile(rule["rule"])).evaluate(activation)
        if isinstance(result, Exception) or not bool(result):
            failures.append(f"{path}: {rule['message']}")
    if isinstance(new, dict):
        for key, child in schema.get("properties", {}).items():
            if key in new:
                old_child = old.get(key) if isinstance(old, dict) else None
                failures += _cel_failures(child, new[key], old_child, f"{path}.{key}")
    if isinstance(new, list) and "items" in schema:
        for index, item in enumerate(new):
            failures += _cel_failures(schema["items"], item, None, f"{path}[{index}]")
    return failures


def crd_problems(new: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    schema_errors = [error.message for error in jsonschema.Draft4Validator(SCHEMA).iter_errors(new)]
    # Like the API server, rules run only on an object that fits the schema (a rule never sees a wrong type).
    return schema_errors or _cel_failures(SCHEMA, new, old, "")


def _with(path: str, value: Any, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """A copy of `base` with `value` set at a dotted path (None removes the key)."""
    document = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return document


ROWS: list[tuple[str, dict[str, Any], bool]] = [
    ("minimal", BASE, True),
    ("dataset by id", _with("spec.dataset", {"id": "a" * 64, "store": "s3://store"}), True),
    ("dataset with both", _with("spec.dataset", {"uri": "s3://a", "id": "a" * 64}), False),
    ("dataset with neither", _with("spec.dataset", {"inputKey": "q"}), False),
    ("dataset id not sha256", _with("spec.dataset", {"id": "abc"}), False),
    ("empty dataset uri", _with("spec.dataset", {"uri": ""}), False),
    ("no dataset", _with("spec.dataset", None), False),
    ("no output", _with("spec.output", None), False),
    ("no spec", _with("spec", None), False),
    ("lamini args", _with("spec.finetuneArgs", {"max_steps": 500, "index_method": "IndexFlatL2"}), True),
    ("max_steps 0", _with("spec.finetuneArgs", {"max_steps": 0}), False),
    ("max_steps as string", _with("spec.finetuneArgs", {"max_steps": "500"}), False),
    ("max_steps float", _with("spec.finetuneArgs", {"max_steps": 1.5}), False),
    ("learning_rate 0", _with("spec.finetuneArgs", {"learning_rate": 0.0}), False),
    ("learning_rate 2", _with("spec.finetuneArgs", {"learning_rate": 2.0}), False),
    ("learning_rate small", _with("spec.finetuneArgs", {"learning_rate": 1e-5}), True),
    ("unknown index", _with("spec.finetuneArgs", {"index_method": "IndexLSH"}), False),
    ("unknown optimizer", _with("spec.finetuneArgs", {"optim": "sgd"}), False),
    ("max_length 1000", _with("spec.finetuneArgs", {"max_length": 1000}), False),
    ("max_length 1024", _with("spec.finetuneArgs", {"max_length": 1024}), True),
    ("max_length 16384", _with("spec.finetuneArgs", {"max_length": 16384}), False),
    ("nprobe above nlist", _with("spec.finetuneArgs", {"index_ivf_nlist": 16, "index_ivf_nprobe": 32}), False),
    ("nprobe above default nlist", _with("spec.finetuneArgs", {"index_ivf_nprobe": 4096}), False),
    ("nprobe below nlist", _with("spec.finetuneArgs", {"index_ivf_nlist": 64, "index_ivf_nprobe": 32}), True),
    ("small nlist, default nprobe", _with("spec.finetuneArgs", {"index_ivf_nlist": 16}), False),
    ("index_k above max size", _with("spec.finetuneArgs", {"index_k": 4, "index_max_size": 2}), False),
    ("gpus 8 nodes 2", _with("spec.gpuConfig", {"gpus": 8, "nodes": 2}), True),
    ("gpus -1", _with("spec.gpuConfig", {"gpus": -1}), False),
    ("nodes 0", _with("spec.gpuConfig", {"nodes": 0}), False),
    ("job backend one node", _with("spec.backend", "job"), True),
    ("job backend 4 nodes", _with("spec.gpuConfig", {"nodes": 4}, _with("spec.backend", "job")), False),
    ("unknown backend", _with("spec.backend", "mpijob"), False),
    ("trainjob backend 4 nodes", _with("spec.gpuConfig", {"nodes": 4}, _with("spec.backend", "trainjob")), True),
    ("gate always", _with("spec.memory", {"gate": "always", "batchSize": 4}), True),
    ("gate unknown", _with("spec.memory", {"gate": "never"}), False),
    ("negative threshold", _with("spec.memory", {"distanceThreshold": -1.0}), False),
    ("suspend", _with("spec.suspend", True), True),
    ("suspend as string", _with("spec.suspend", "yes"), False),
    ("backoffLimit 101", _with("spec.backoffLimit", 101), False),
    ("deadline 0", _with("spec.activeDeadlineSeconds", 0), False),
    ("ttl 0", _with("spec.ttlSecondsAfterFinished", 0), True),
    ("empty queue name", _with("spec.queueName", ""), False),
    ("storage secret", _with("spec.storage", {"secretRef": {"name": "s3-creds"}}), True),
    ("storage secret unnamed", _with("spec.storage", {"secretRef": {}}), False),
    (
        "trainer placement",
        _with(
            "spec.trainer",
            {
                "image": "ghcr.io/memtune/trainer:0.1",
                "nodeSelector": {"gpu": "h100"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
                "imagePullSecrets": [{"name": "regcred"}],
                "resources": {"limits": {"memory": "64Gi"}},
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
            },
        ),
        True,
    ),
    ("node selector not string", _with("spec.trainer", {"nodeSelector": {"gpu": 1}}), False),
    (
        "env from secret",
        _with("spec.trainer", {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
        True,
    ),
    (
        "env value and valueFrom",
        _with(
            "spec.trainer",
            {"env": [{"name": "T", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        ),
        False,
    ),
    (
        "env from two sources",
        _with(
            "spec.trainer",
            {
                "env": [
                    {
                        "name": "T",
                        "valueFrom": {
                            "secretKeyRef": {"name": "s", "key": "k"},
                            "configMapKeyRef": {"name": "c", "key": "k"},
                        },
                    }
                ]
            },
        ),
        False,
    ),
    ("env bad name", _with("spec.trainer", {"env": [{"name": "1X", "value": "x"}]}), False),
    ("literal secret in env", _with("spec.trainer", {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}), False),
    ("literal token in env", _with("spec.trainer", {"env": [{"name": "hf.token", "value": "x"}]}), False),
    (
        "tokenizers setting in env",
        _with("spec.trainer", {"env": [{"name": "TOKENIZERS_PARALLELISM", "value": "0"}]}),
        True,
    ),
    (
        "access key id as a value",
        _with("spec.trainer", {"env": [{"name": "X", "value": "AKIAIOSFODNN7EXAMPLE"}]}),
        False,
    ),
    ("userinfo URI as a value", _with("spec.trainer", {"env": [{"name": "X", "value": "see https://u:p@h/x"}]}), False),
    (
        "credential from a config map",
        _with(
            "spec.trainer",
            {"env": [{"name": "DB_PASSWORD", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
        ),
        False,
    ),
    ("userinfo in dataset uri", _with("spec.dataset", {"uri": "https://u:p@h/f.jsonl"}), False),
    ("slash in a secret in a uri", _with("spec.dataset", {"uri": "s3://KEY:a/b+c@bucket/f.jsonl"}), False),
    ("at sign in an object key", _with("spec.dataset", {"uri": "s3://bucket/f@v2.jsonl"}), True),
    ("port and at sign in a path", _with("spec.dataset", {"uri": "https://host:8080/a@b.jsonl"}), True),
    ("userinfo in store", _with("spec.dataset", {"id": "a" * 64, "store": "s3://K:p@bucket"}), False),
    ("userinfo in output", _with("spec.output", {"uri": "s3://K:p@bucket/out"}), False),
    ("userinfo in base model", _with("spec.baseModel", "s3://K:p@bucket/model"), False),
    ("seed at int32 max", _with("spec.memory", {"seed": 2**31 - 1}), True),
    ("seed past int32", _with("spec.memory", {"seed": 2**31}), False),
    ("negative expert layer", _with("spec.memory", {"expertLayers": [-1]}), False),
    ("key layer at an expert layer", _with("spec.memory", {"keyLayer": 8, "expertLayers": [8, 9]}), False),
    ("key layer below expert layers", _with("spec.memory", {"keyLayer": 7, "expertLayers": [8, 9]}), True),
    ("threshold past 4", _with("spec.memory", {"distanceThreshold": 4.5}), False),
    ("parent memory", _with("spec.memory", {"parent": "s3://bucket/jobs/facts-v1"}), True),
    ("append to a parent", _with("spec.memory", {"parent": "s3://bucket/jobs/facts-v1", "mode": "append"}), True),
    ("append without a parent", _with("spec.memory", {"mode": "append"}), False),
    ("replace without a parent", _with("spec.memory", {"mode": "replace"}), True),
    ("unknown mode", _with("spec.memory", {"parent": "s3://b/j", "mode": "merge"}), False),
    ("userinfo in parent", _with("spec.memory", {"parent": "s3://K:p@bucket/jobs/v1"}), False),
    ("deadline past int32", _with("spec.activeDeadlineSeconds", 2**31), False),
    ("name too long", _with("metadata.name", "a" * 41), False),
    ("name with capitals", _with("metadata.name", "NBA"), False),
    ("name starting with digit", _with("metadata.name", "1job"), False),
]


@pytest.mark.parametrize(("document", "valid"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_crd_and_pydantic_agree(document: dict[str, Any], valid: bool) -> None:
    problems = crd_problems(document)
    assert (not problems) == valid, problems
    try:
        parse_job(document)
        pydantic_valid = True
    except SpecError:
        pydantic_valid = False
    assert pydantic_valid == valid


STARTED = _with("status", {"phase": "Running"})
UPDATES = [
    ("suspend a running job", STARTED, _with("spec.suspend", True, STARTED), True),
    ("change steps while running", STARTED, _with("spec.finetuneArgs", {"max_steps": 9}, STARTED), False),
    ("add a field while running", STARTED, _with("spec.queueName", "gpu", STARTED), False),
    ("remove a field while running", _with("spec.backoffLimit", 2, STARTED), STARTED, False),
    ("change before the operator acted", BASE, _with("spec.finetuneArgs", {"max_steps": 9}), True),
    ("status update while running", STARTED, _with("status", {"phase": "Succeeded"}), True),
]


@pytest.mark.parametrize(("old", "new", "allowed"), [row[1:] for row in UPDATES], ids=[row[0] for row in UPDATES])
def test_spec_is_immutable_once_started_except_suspend(old: dict, new: dict, allowed: bool) -> None:
    problems = crd_problems(new, old)
    assert (not problems) == allowed, problems
    if not allowed:
        assert any("immutable" in problem for problem in problems)


def test_committed_crd_is_up_to_date() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "regenerate crds/ with memtune.crd.crd_yaml()"


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += _walk(node[key], f"{path}[{key}]")
    return found


def test_schema_is_structural() -> None:
    for path, node in _walk(SCHEMA):
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "default", "title", "const"} & set(node), path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_crd_metadata() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["mtj"]
    assert version["subresources"] == {"status": {}}
    assert [column["name"] for column in version["additionalPrinterColumns"]] == [
        "Phase", "Progress", "ETA-Seconds", "Loss", "Recall", "Step", "Max-Steps", "Backend", "Attempt", "Age",
    ]  # fmt: skip
    # Every column's path exists in the status schema (a typo would show an empty column forever).
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    for column in version["additionalPrinterColumns"][:-1]:
        node = status
        for part in column["jsonPath"].split(".")[2:]:
            node = node["properties"][part] if "properties" in node else node["additionalProperties"]
        assert node["type"] == column["type"], column
