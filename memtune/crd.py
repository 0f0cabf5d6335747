"""Generate the MemoryTuningJob CustomResourceDefinition from the pydantic models in `memtune.spec`.

    python -c "from memtune.crd import crd_yaml; print(crd_yaml(), end='')" > crds/memorytuningjobs.memtune.dev.yaml

Kubernetes wants a *structural* schema: every node typed, no `$ref`, no `anyOf` of alternatives, no
`additionalProperties` beside `properties`. We derive it from pydantic's JSON schema: inline `$ref`s, turn
`X | None` into plain `X` (the field is simply optional; Kubernetes prunes nulls), keep enums, ranges, lengths,
patterns and `required`. What JSON schema cannot say (rules spanning fields, "immutable once running") becomes
CEL in `x-kubernetes-validations`; each rule mirrors a pydantic validator, and `tests/test_crd.py` checks that
both agree on a table of custom resources.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from memtune import spec as s
from memtune.redact import CREDENTIAL_NAME, CREDENTIAL_VALUE, URI_USERINFO

# JSON-schema keys that a structural schema keeps as they are.
_KEPT = (
    "type", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "description", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
)  # fmt: skip
_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_RULES_KEY = "x-kubernetes-validations"


def _default(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].default


def _or_default(model: type[BaseModel], field: str) -> str:
    """CEL for a field's value, falling back to the pydantic default: the CRD declares no defaults."""
    return f"(has(self.{field}) ? self.{field} : {_default(model, field)})"


_POWERS_OF_TWO = [2**n for n in range(4, 14)]  # 16 ... 8192, as FinetuneArgs._power_of_two demands


def _no_userinfo(field: str) -> dict[str, str]:
    """CEL mirroring spec._no_userinfo: a URI field holds no user:password@."""
    return {
        "rule": f"!has(self.{field}) || !self.{field}.matches('{URI_USERINFO}')",
        "message": f"{field} must not embed credentials (user:password@ in the URI); use spec.storage.secretRef",
    }


# CEL rules per pydantic model (by $defs name), each mirroring a validator in memtune/spec.py.
_MODEL_RULES: dict[str, list[dict[str, str]]] = {
    "DatasetRef": [
        {"rule": "has(self.uri) != has(self.id)", "message": "set exactly one of dataset.uri and dataset.id"},
        _no_userinfo("uri"),
        _no_userinfo("store"),
    ],
    "OutputRef": [_no_userinfo("uri")],
    "MemoryConfig": [
        {
            "rule": "!has(self.keyLayer) || !has(self.expertLayers) || self.expertLayers.all(l, l > self.keyLayer)",
            "message": "keyLayer must be below every expert layer, so that experts never move the keys",
        },
        {
            "rule": "!has(self.mode) || self.mode != 'append' || has(self.parent)",
            "message": "mode 'append' adds to a parent memory: set memory.parent as well",
        },
        _no_userinfo("parent"),
    ],
    "FinetuneArgs": [
        {
            "rule": f"!has(self.max_length) || self.max_length in {_POWERS_OF_TWO}",
            "message": "max_length must be a power of two (16 ... 8192)",
        },
        {
            "rule": f"{_or_default(s.FinetuneArgs, 'index_ivf_nprobe')} <= "
            f"{_or_default(s.FinetuneArgs, 'index_ivf_nlist')}",
            "message": "index_ivf_nprobe must not exceed index_ivf_nlist",
        },
        {
            "rule": f"{_or_default(s.FinetuneArgs, 'index_k')} <= {_or_default(s.FinetuneArgs, 'index_max_size')}",
            "message": "index_k must not exceed index_max_size",
        },
    ],
    "EnvVar": [
        {"rule": "!(has(self.value) && has(self.valueFrom))", "message": "set at most one of value and valueFrom"},
        {
            "rule": f"!has(self.value) || !self.name.matches('{CREDENTIAL_NAME}')",
            "message": "a credential may not be written in the spec: use valueFrom.secretKeyRef",
        },
        {
            "rule": f"!has(self.value) || !self.value.matches('{CREDENTIAL_VALUE}')",
            "message": "value holds a credential; credentials come from a Secret (valueFrom.secretKeyRef)",
        },
        {
            "rule": "!has(self.valueFrom) || !has(self.valueFrom.configMapKeyRef) || "
            f"!self.name.matches('{CREDENTIAL_NAME}')",
            "message": "a credential comes from a Secret (valueFrom.secretKeyRef), not a ConfigMap",
        },
    ],
    "EnvVarSource": [
        {
            "rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "message": "set exactly one of secretKeyRef and configMapKeyRef",
        }
    ],
}

_SPEC_RULES = [
    _no_userinfo("baseModel"),
    {
        "rule": "!has(self.backend) || self.backend != 'job' || !has(self.gpuConfig) || !has(self.gpuConfig.nodes)"
        " || self.gpuConfig.nodes == 1",
        "message": "backend 'job' runs a single node: set gpuConfig.nodes to 1 or use backend 'trainjob' or "
        "'pytorchjob'",
    },
]


def _unchanged(field: str) -> str:
    """CEL: spec.<field> is the same in the old and new object, absence included."""
    new, old = f"self.spec.{field}", f"oldSelf.spec.{field}"
    return f"(has({new}) ? (has({old}) && {new} == {old}) : !has({old}))"


def _immutability_rule() -> dict[str, str]:
    """Once the operator has acted (status.phase is set), only spec.suspend may change."""
    fields = [name for name in s.MemoryTuningJobSpec.model_fields if name != "suspend"]
    started = "has(oldSelf.status) && has(oldSelf.status.phase)"
    return {
        "rule": f"!({started}) || ({' && '.join(_unchanged(name) for name in fields)})",
        "message": "spec is immutable once the job has started (only spec.suspend may change): "
        "create a job with a new name to retune",
    }


_ROOT_RULES = [
    {
        "rule": f"self.metadata.name.size() <= {s.MAX_JOB_NAME_LENGTH}",
        "message": f"metadata.name must be at most {s.MAX_JOB_NAME_LENGTH} characters (children add suffixes)",
    },
    {
        "rule": f"self.metadata.name.matches('{s._DNS_1035.pattern}')",
        "message": "metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter",
    },
    _immutability_rule(),
]


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node → one structural OpenAPI v3 node (recursively)."""
    node = dict(node)
    if "anyOf" in node:  # `X | None` → X; the field stays optional
        options = [option for option in node.pop("anyOf") if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a structural schema: {options}")
        extra_items = node.pop("items", {})
        node = {**options[0], **node}
        if extra_items:  # json_schema_extra={"items": ...} refines the option's items
            node["items"] = {**node.get("items", {}), **extra_items}
    rules: list[dict[str, str]] = []
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        rules = _MODEL_RULES.get(name, [])
        node = {**defs[name], **node}  # the use site's description wins over the model's

    out: dict[str, Any] = {key: node[key] for key in _KEPT if key in node}
    if "exclusiveMinimum" in node:  # JSON schema 2020-12 number → OpenAPI v3 boolean flag
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if node.get(_PRESERVE):
        out["type"] = "object"  # raw Kubernetes objects (affinity, tolerations): kept as given, checked by the API
        return out
    if "properties" in node:
        out["properties"] = {key: _structural(value, defs) for key, value in node["properties"].items()}
        if node.get("required"):
            out["required"] = list(node["required"])
    elif isinstance(node.get("additionalProperties"), dict):  # dict[str, X]
        out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
    if rules:
        out[_RULES_KEY] = rules
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return _structural(schema, schema.get("$defs", {}))


def _status_schema() -> dict[str, Any]:
    status = _schema_of(s.MemoryTuningJobStatus)
    # Conditions are a map keyed by type, so server-side apply and GitOps tools merge them per type.
    status["properties"]["conditions"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    return status


def _open_api_schema() -> dict[str, Any]:
    spec = _schema_of(s.MemoryTuningJobSpec)
    spec[_RULES_KEY] = _SPEC_RULES
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": _status_schema(),
        },
        _RULES_KEY: _ROOT_RULES,
    }


# `kubectl get mtj`; priority 1 columns only with `-o wide`.
_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percentage", "description": "percent"},
    {
        "name": "ETA-Seconds",
        "type": "integer",
        "jsonPath": ".status.progress.estimatedRemainingSeconds",
        "description": "estimated seconds of training left",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Recall", "type": "number", "jsonPath": ".status.metrics.recall"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "priority": 1},
    {"name": "Max-Steps", "type": "integer", "jsonPath": ".status.progress.maxSteps", "priority": 1},
    {"name": "Backend", "type": "string", "jsonPath": ".status.backend", "priority": 1},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The MemoryTuningJob CRD (apiextensions.k8s.io/v1) as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{s.PLURAL}.{s.API_GROUP}"},
        "spec": {
            "group": s.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": s.KIND,
                "listKind": f"{s.KIND}List",
                "plural": s.PLURAL,
                "singular": s.KIND.lower(),
                "shortNames": ["mtj"],
                "categories": ["memtune"],
            },
            "versions": [
                {
                    "name": s.API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _open_api_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed under crds/ (stable key order, so diffs stay readable)."""
    header = "# Generated by memtune.crd.crd_yaml() from memtune/spec.py: do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
