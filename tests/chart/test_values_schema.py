"""values.schema.json refuses bad values before anything renders, naming the offending key."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from .render import CHART, VARIATIONS, render

# (values, fragment of Helm's message naming the field)
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": 2}, "'replicaCount' not allowed"),
    ({"image": {"repository": "x", "pullPolicy": "IfNotPresent", "tagg": "1"}}, "'tagg' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"image": {"repository": "Not An Image"}}, "/image/repository"),
    ({"trainer": {"image": {"repository": "x", "pullPolicy": "Always"}}}, "'pullPolicy' not allowed"),
    ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
    ({"watchNamespaces": ["team-a", "team-a"]}, "/watchNamespaces"),
    ({"watchNamespaces": ["team-*"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"storageSecret": "AKIAIOSFODNN7EXAMPLE/wJalrXUtnFEMI"}, "/storageSecret"),
    ({"storageSecret": {"accessKey": "a", "secretKey": "b"}}, "/storageSecret"),
    ({"logLevel": "loud"}, "/logLevel"),
    ({"logLevel": "info"}, "/logLevel"),
    ({"serviceAccount": {"create": "yes"}}, "/serviceAccount/create"),
    ({"serviceAccount": {"automount": False}}, "'automount' not allowed"),
    ({"rbac": {"create": True, "extraRules": []}}, "'extraRules' not allowed"),
    ({"runAsUser": 0}, "/runAsUser"),
    ({"runAsUser": "1000"}, "/runAsUser"),
    ({"runAsGroup": 0}, "/runAsGroup"),
    ({"securityContext": {"privileged": True}}, "'securityContext' not allowed"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, "'nvidia.com/gpu' not allowed"),
    ({"resources": {"requests": {"cpu": -1}}}, "/resources/requests/cpu"),
    ({"nodeSelector": {"pool": 1}}, "/nodeSelector/pool"),
    ({"tolerations": [{"key": "a", "operator": "Maybe"}]}, "/tolerations/0/operator"),
    ({"tolerations": {"key": "a"}}, "/tolerations"),
    ({"affinity": {"nodeSelector": {}}}, "'nodeSelector' not allowed"),
    ({"priorityClassName": "High Priority"}, "/priorityClassName"),
    ({"podAnnotations": {"a": True}}, "/podAnnotations/a"),
    ({"podLabels": {"app.kubernetes.io/name": "other"}}, "propertyName 'app.kubernetes.io/name'"),
    ({"imagePullSecrets": ["regcred"]}, "/imagePullSecrets/0"),
    ({"hostNetwork": True}, "'hostNetwork' not allowed"),
    ({"jobPolicy": {"allowedImages": "registry.example.com/*"}}, "/jobPolicy/allowedImages"),
    ({"jobPolicy": {"allowedImages": ["a/*,b/*"]}}, "/jobPolicy/allowedImages/0"),
    ({"jobPolicy": {"allowedServiceAccounts": ["Admin SA"]}}, "/jobPolicy/allowedServiceAccounts/0"),
    ({"jobPolicy": {"allowSecrets": True}}, "'allowSecrets' not allowed"),
    ({"trainer": {"image": {"repository": "x"}, "serviceAccountName": "Bad_Name"}}, "/trainer/serviceAccountName"),
    ({"trainJob": {"runtime": {"install": "yes"}}}, "/trainJob/runtime/install"),
    ({"trainJob": {"runtime": {"name": "Memtune Torch"}}}, "/trainJob/runtime/name"),
    ({"metrics": {"port": 8080}}, "/metrics/port"),
    ({"metrics": {"port": 80}}, "/metrics/port"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ({"metrics": {"serviceMonitor": {"labels": {"release": 1}}}}, "/metrics/serviceMonitor/labels/release"),
]


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[field for _, field in BAD_VALUES])
def test_bad_values_are_refused_naming_the_field(chart: helm.Chart, values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert field in str(refused.value)


def test_render_refuses_what_the_schema_refuses() -> None:
    with pytest.raises(helm.HelmValuesError, match="/runAsUser"):
        render({"runAsUser": 0})


@pytest.mark.parametrize("name", list(VARIATIONS))
def test_documented_variations_are_accepted(chart: helm.Chart, name: str) -> None:
    chart.validate_schema(VARIATIONS[name])
