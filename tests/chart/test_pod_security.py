"""The restricted-profile checker finds each kind of violation, so a clean report on the chart means something."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from .pod_security import pod_specs, restricted_violations


def compliant_pod() -> dict[str, Any]:
    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "main",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "spec", "configMap": {"name": "spec"}}],
    }


def main_context(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]["securityContext"]


# (what breaks the pod, a fragment of the message that must name it)
BREAKERS: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda pod: pod.update(hostNetwork=True), "hostNetwork"),
    (lambda pod: pod.update(hostPID=True), "hostPID"),
    (lambda pod: pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda pod: pod["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
    (lambda pod: pod["securityContext"].update(runAsUser=0), "runAsUser must not be 0"),
    (lambda pod: main_context(pod).update(runAsUser=0), "runAsUser must not be 0"),
    (lambda pod: main_context(pod).update(runAsNonRoot=False), "runAsNonRoot must not be false"),
    (lambda pod: pod["securityContext"].pop("seccompProfile"), "seccompProfile"),
    (lambda pod: main_context(pod).update(seccompProfile={"type": "Unconfined"}), "Unconfined"),
    (lambda pod: main_context(pod).update(privileged=True), "privileged"),
    (lambda pod: main_context(pod).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    (lambda pod: main_context(pod).update(capabilities={"drop": ["NET_RAW"]}), "drop must include ALL"),
    (lambda pod: main_context(pod)["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"),
    (lambda pod: main_context(pod).update(procMount="Unmasked"), "procMount"),
    (lambda pod: main_context(pod).update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions"),
    (lambda pod: main_context(pod).update(appArmorProfile={"type": "Unconfined"}), "appArmorProfile"),
    (lambda pod: pod["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "kernel.msgmax"),
    (lambda pod: pod["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), "hostPort"),
    (lambda pod: main_context(pod).pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
    (lambda pod: pod.update(initContainers=[{"name": "init", "image": "x"}]), "initContainers[init]"),
]


def test_compliant_pod_passes() -> None:
    assert restricted_violations({"kind": "Pod", "metadata": {"name": "p"}, "spec": compliant_pod()}) == []


@pytest.mark.parametrize(("breaker", "named"), BREAKERS, ids=[named for _, named in BREAKERS])
def test_each_violation_is_reported(breaker: Callable[[dict[str, Any]], Any], named: str) -> None:
    pod = copy.deepcopy(compliant_pod())
    breaker(pod)
    violations = restricted_violations({"kind": "Pod", "metadata": {"name": "p"}, "spec": pod})
    assert any(named in violation for violation in violations), violations


def test_container_level_settings_can_stand_in_for_pod_level_ones() -> None:
    pod = compliant_pod()
    pod["securityContext"] = {}
    main_context(pod).update(runAsNonRoot=True, seccompProfile={"type": "Localhost", "localhostProfile": "p.json"})
    assert restricted_violations({"kind": "Pod", "metadata": {"name": "p"}, "spec": pod}) == []


def test_read_only_root_is_memtunes_rule_not_the_profiles() -> None:
    pod = compliant_pod()
    main_context(pod).pop("readOnlyRootFilesystem")
    obj = {"kind": "Pod", "metadata": {"name": "p"}, "spec": pod}
    assert restricted_violations(obj, read_only_root=False) == []


def test_pods_are_found_in_every_workload_kind() -> None:
    template = {"spec": compliant_pod()}
    workloads = {
        "Deployment": {"template": template},
        "Job": {"template": template},
        "CronJob": {"jobTemplate": {"spec": {"template": template}}},
        "PyTorchJob": {"pytorchReplicaSpecs": {"Master": {"template": template}, "Worker": {"template": template}}},
    }
    found = {
        where
        for kind, spec in workloads.items()
        for where, _ in pod_specs({"kind": kind, "metadata": {"name": "j"}, "spec": spec})
    }
    assert found == {"Deployment/j", "Job/j", "CronJob/j", "PyTorchJob/j[Master]", "PyTorchJob/j[Worker]"}
