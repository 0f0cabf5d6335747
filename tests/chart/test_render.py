"""The chart rendered by Helm's engine: valid Kubernetes objects, restricted pods, least-privilege RBAC."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import helm_python as helm
import kubernetes_validate
import pytest

from .pod_security import restricted_violations
from .render import CHART, NAMESPACE, RELEASE, VARIATIONS, notes, of_kind, only, render

# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

# The operator's RBAC contract (docs/trainer-contract.md): (apiGroup, resource) -> verbs, per watched namespace.
# tests/operator checks every request the operator makes against the rendered chart, and that it uses them all.
NAMESPACED_RULES = {
    ("memtune.dev", "memorytuningjobs"): {"get", "list", "watch", "patch"},
    ("memtune.dev", "memorytuningjobs/status"): {"patch"},
    ("trainer.kubeflow.org", "trainjobs"): {"get", "create", "patch", "delete"},
    ("kubeflow.org", "pytorchjobs"): {"get", "create", "patch", "delete"},
    ("batch", "jobs"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "delete"},
    ("", "pods"): {"list"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create"},
    # Serving (MemoryModel): a Deployment and a Service per served memory.
    ("memtune.dev", "memorymodels"): {"list", "watch", "patch"},
    ("memtune.dev", "memorymodels/status"): {"patch"},
    ("apps", "deployments"): {"get", "create", "patch"},
    ("", "services"): {"create"},
}
# get: is Trainer's TrainJob / Kubeflow's PyTorchJob installed? list, watch: kopf's resource observer.
CRD_DISCOVERY_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
# Verbs that would let the operator grant itself more than it holds.
ESCALATING_VERBS = {"escalate", "bind", "impersonate"}


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """A role's rules flattened to (apiGroup, resource) -> verbs."""
    flat: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                flat.setdefault((group, resource), set()).update(rule["verbs"])
    return flat


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return operator


def env_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(objects)["env"]}


@pytest.fixture(scope="module", params=list(VARIATIONS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(VARIATIONS[request.param])


def test_helm_lint_is_clean() -> None:
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE)
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert report["errors"] == [] and problems == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(rendered: list[dict[str, Any]], version: str) -> None:
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {error.message}")


def test_every_pod_meets_the_restricted_profile(rendered: list[dict[str, Any]]) -> None:
    assert [violation for obj in rendered for violation in restricted_violations(obj)] == []


def test_rbac_has_no_wildcards_no_secrets_and_no_escalation(rendered: list[dict[str, Any]]) -> None:
    for role in of_kind(rendered, "ClusterRole") + of_kind(rendered, "Role"):
        for rule in role["rules"]:
            fields = rule["apiGroups"] + rule["resources"] + rule["verbs"] + rule.get("resourceNames", [])
            assert "*" not in fields, f"{role['metadata']['name']}: wildcard in {rule}"
            assert "secrets" not in rule["resources"], f"{role['metadata']['name']} may read Secrets"
            assert not ESCALATING_VERBS & set(rule["verbs"])
            assert "nonResourceURLs" not in rule


def test_cluster_wide_install_binds_the_contract_rules_cluster_wide() -> None:
    objects = render()
    cluster_roles = {role["metadata"]["name"]: grants(role) for role in of_kind(objects, "ClusterRole")}
    assert cluster_roles == {RELEASE: NAMESPACED_RULES, f"{RELEASE}-crd-discovery": CRD_DISCOVERY_RULES}
    assert of_kind(objects, "Role") == []
    assert "--all-namespaces" in container(objects)["command"]


def test_namespaced_install_gets_one_role_per_namespace_and_only_crd_discovery_cluster_wide() -> None:
    objects = render(VARIATIONS["namespaced"])
    roles = {role["metadata"]["namespace"]: grants(role) for role in of_kind(objects, "Role")}
    assert roles == {"team-a": NAMESPACED_RULES, "team-b": NAMESPACED_RULES}
    assert [grants(role) for role in of_kind(objects, "ClusterRole")] == [CRD_DISCOVERY_RULES]
    bindings = {binding["metadata"]["namespace"] for binding in of_kind(objects, "RoleBinding")}
    assert bindings == {"team-a", "team-b"}
    command = container(objects)["command"]
    assert "--all-namespaces" not in command
    assert [arg for arg in command if arg.startswith("--namespace=")] == ["--namespace=team-a", "--namespace=team-b"]


def test_bindings_point_at_rendered_roles_and_the_operator_service_account(rendered: list[dict[str, Any]]) -> None:
    account = only(rendered, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    role_names = {(role["kind"], role["metadata"]["name"]) for role in rendered if role["kind"].endswith("Role")}
    for binding in of_kind(rendered, "ClusterRoleBinding") + of_kind(rendered, "RoleBinding"):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in role_names
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


def test_rbac_and_service_account_can_be_left_to_the_platform_team() -> None:
    objects = render(VARIATIONS["everything-set"])
    assert {obj["kind"] for obj in objects} == {"Deployment", "Service"}  # the Service: metrics
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-memtune"


def test_one_replica_replaced_not_rolled(rendered: list[dict[str, Any]]) -> None:
    spec = only(rendered, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_liveness_probe_hits_the_endpoint_kopf_serves(rendered: list[dict[str, Any]]) -> None:
    operator = container(rendered)
    (flag,) = [arg for arg in operator["command"] if arg.startswith("--liveness=")]
    served = urlparse(flag.removeprefix("--liveness="))
    probe = operator["livenessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert probe["path"] == served.path
    assert ports[probe["port"]] == served.port


def test_writable_paths_are_mounted_volumes(rendered: list[dict[str, Any]]) -> None:
    operator = container(rendered)
    mounts = {mount["mountPath"] for mount in operator["volumeMounts"]}
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert env_of(rendered)["HOME"] in mounts


def test_operator_settings_reach_the_environment() -> None:
    defaults = env_of(render())
    with helm.Chart.load(CHART) as chart:
        app_version = chart.metadata["appVersion"]
    assert defaults["MEMTUNE_TRAINER_IMAGE"] == f"ghcr.io/memtune/trainer:{app_version}"
    assert defaults["MEMTUNE_STORAGE_SECRET"] == ""
    assert defaults["MEMTUNE_LOG_LEVEL"] == "INFO"
    assert container(render())["image"] == f"ghcr.io/memtune/operator:{app_version}"

    custom = render(VARIATIONS["everything-set"])
    assert env_of(custom)["MEMTUNE_TRAINER_IMAGE"] == "registry.example.com/ml/memtune-trainer:0.1.0-cuda"
    assert env_of(custom)["MEMTUNE_STORAGE_SECRET"] == "minio-credentials"
    assert env_of(custom)["MEMTUNE_LOG_LEVEL"] == "DEBUG"
    assert container(custom)["image"] == "registry.example.com/ml/memtune-operator@sha256:" + "a" * 64


def test_every_object_lives_in_the_release_namespace_or_a_watched_one() -> None:
    objects = render(VARIATIONS["namespaced"], namespace="ops")
    namespaced = [obj for obj in objects if not obj["kind"].startswith("Cluster")]
    assert {obj["metadata"]["namespace"] for obj in namespaced} == {"ops", "team-a", "team-b"}
    assert {obj["metadata"]["namespace"] for obj in of_kind(objects, "Role")} == {"team-a", "team-b"}


def test_notes_name_the_watched_namespaces() -> None:
    assert "every namespace" in notes()
    assert "team-a, team-b" in notes(VARIATIONS["namespaced"])


def test_the_training_runtime_renders_restricted_and_schema_valid() -> None:
    from tests.operator.mtj_schemas import RUNTIME_CRD, validate_crd_object

    assert of_kind(render(), "ClusterTrainingRuntime") == []  # auto, and `helm template` knows no Trainer API
    objects = render({"trainJob": {"runtime": {"install": "always", "name": "memtune-torch"}}})
    runtime = only(objects, "ClusterTrainingRuntime")
    validate_crd_object(runtime, RUNTIME_CRD)
    assert runtime["metadata"]["name"] == "memtune-torch"
    assert restricted_violations(runtime) == []
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = node["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "node" and container["image"] == env_of(objects)["MEMTUNE_TRAINER_IMAGE"]
    from memtune import contract
    from memtune.operator import podsecurity

    assert container["command"] == contract.TRAINER_COMMAND
    assert pod["securityContext"] == podsecurity.pod_security_context()
    assert container["securityContext"] == podsecurity.container_security_context()
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts[contract.SPEC_MOUNT_DIR] == {"name": "memtune-spec", "mountPath": "/etc/memtune", "readOnly": True}
    assert podsecurity.volumes(podsecurity.writable_dirs(0)) == pod["volumes"]
    template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": node["template"]["spec"]["template"],
    }
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(template, version, strict=True)
    assert env_of(render({"trainJob": {"runtime": {"name": "team-torch"}}}))["MEMTUNE_TRAINJOB_RUNTIME"] == "team-torch"


def test_metrics_service_and_service_monitor() -> None:
    objects = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    operator = container(objects)
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert env_of(objects)["MEMTUNE_METRICS_PORT"] == str(ports["metrics"]) == "8081"
    service = next(obj for obj in of_kind(objects, "Service") if obj["metadata"]["name"].endswith("-metrics"))
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert of_kind(render(), "ServiceMonitor") == []  # off by default: it needs prometheus-operator's CRD
    off = render({"metrics": {"enabled": False}})
    assert env_of(off)["MEMTUNE_METRICS_PORT"] == "0" and of_kind(off, "Service") == []


def test_job_policy_reaches_the_operator() -> None:
    values = {
        "jobPolicy": {"allowedImages": ["registry.example.com/ml/*", "ghcr.io/memtune/*"],
                      "allowedServiceAccounts": ["trainer", "trainer-gpu"]},
        "trainer": {"image": {"repository": "ghcr.io/memtune/trainer"}, "serviceAccountName": "trainer"},
    }  # fmt: skip
    env = env_of(render(values))
    assert env["MEMTUNE_ALLOWED_IMAGES"] == "registry.example.com/ml/*,ghcr.io/memtune/*"
    assert env["MEMTUNE_ALLOWED_SERVICE_ACCOUNTS"] == "trainer,trainer-gpu"
    assert env["MEMTUNE_TRAINER_SERVICE_ACCOUNT"] == "trainer"
    defaults = env_of(render())
    assert defaults["MEMTUNE_ALLOWED_IMAGES"] == "" and defaults["MEMTUNE_ALLOWED_SERVICE_ACCOUNTS"] == ""
