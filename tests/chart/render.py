"""Render the memtune chart with Helm's own engine (helm-python-sdk binds Helm's Go SDK; no helm binary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "memtune"
RELEASE = "memtune"
NAMESPACE = "memtune-system"

# Value sets every test renders: the defaults, a namespaced install, and every value set at once.
VARIATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "everything-set": {
        "image": {"repository": "registry.example.com/ml/memtune-operator", "digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "trainer": {"image": {"repository": "registry.example.com/ml/memtune-trainer", "tag": "0.1.0-cuda"}},
        "storageSecret": "minio-credentials",
        "logLevel": "DEBUG",
        "serviceAccount": {"create": False, "name": "platform-memtune"},
        "rbac": {"create": False},
        "runAsUser": 1001,
        "runAsGroup": 1001,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"prometheus.io/scrape": "false"},
        "podLabels": {"team": "ml-platform"},
    },
}


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object `helm template` would send for `values` (templates only: Helm keeps crds/ apart)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            objects += [document for document in yaml.safe_load_all(text) if document]
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    """The rendered NOTES.txt shown after `helm install`."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return manifests[f"{CHART.name}/templates/NOTES.txt"]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of `kind`; fails when there are none or several."""
    (found,) = of_kind(objects, kind)
    return found
