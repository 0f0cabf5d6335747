"""Check pod specs against the Kubernetes Pod Security Standards "restricted" profile (baseline included).

Reusable for any object that carries pods: the chart's Deployment here, and the operator's trainer
PyTorchJob / Job in the operator tests (pytest puts tests/ on sys.path, since tests/ itself is no package)::

    from tests.chart.pod_security import restricted_violations

    assert restricted_violations(pytorchjob) == []

The rules follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version
"latest"). memtune also requires a read-only root filesystem, which the profile itself does not; pass
`read_only_root=False` to check the profile alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# Volume types the restricted profile allows; every other source (hostPath, nfs, ...) is refused.
ALLOWED_VOLUME_SOURCES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# Sysctls the baseline profile calls safe (namespaced, isolated from the node).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
ALLOWED_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
CONFINED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield `(where, pod spec)` for every pod template a workload object defines."""
    kind, spec = obj.get("kind", ""), obj.get("spec") or {}
    name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
    if kind == "Pod":
        yield name, spec
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
        for replicated in spec["template"]["spec"]["replicatedJobs"]:
            yield f"{name}[{replicated['name']}]", replicated["template"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for replica, replica_spec in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield f"{name}[{replica}]", replica_spec["template"]["spec"]
    elif isinstance(spec.get("template"), dict) and "spec" in spec["template"]:
        # Deployment, StatefulSet, DaemonSet, ReplicaSet, Job.
        yield name, spec["template"]["spec"]


def restricted_violations(obj: dict[str, Any], *, read_only_root: bool = True) -> list[str]:
    """Every restricted-profile violation in the pods of `obj`, as readable lines naming the field."""
    problems = []
    for where, pod in pod_specs(obj):
        problems += [f"{where}: {problem}" for problem in _pod_violations(pod, read_only_root)]
    return problems


def _pod_violations(pod: dict[str, Any], read_only_root: bool) -> list[str]:
    problems = []
    pod_context = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field} must be unset or false")
    for volume in pod.get("volumes") or []:
        sources = set(volume) - {"name"}
        if not sources <= ALLOWED_VOLUME_SOURCES:
            problems.append(f"volume {volume.get('name')!r} uses {sorted(sources - ALLOWED_VOLUME_SOURCES)}")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"securityContext.sysctls: {sysctl.get('name')!r} is not a safe sysctl")
    problems += _context_violations("securityContext", pod_context)
    if pod_context.get("runAsNonRoot") is not True:
        problems += _needs_on_every_container(pod, "runAsNonRoot", lambda c: c.get("runAsNonRoot") is True)
    if _seccomp_type(pod_context) not in CONFINED_SECCOMP:
        problems += _needs_on_every_container(
            pod, "seccompProfile.type RuntimeDefault or Localhost", lambda c: _seccomp_type(c) in CONFINED_SECCOMP
        )
    for list_name, container in _containers(pod):
        where = f"{list_name}[{container.get('name')}]"
        problems += [f"{where}: {problem}" for problem in _container_violations(container, read_only_root)]
    return problems


def _container_violations(container: dict[str, Any], read_only_root: bool) -> list[str]:
    context = container.get("securityContext") or {}
    problems = _context_violations("securityContext", context)
    if context.get("privileged"):
        problems.append("securityContext.privileged must be unset or false")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext.allowPrivilegeEscalation must be false")
    if context.get("runAsNonRoot") is False:
        problems.append("securityContext.runAsNonRoot must not be false")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append("securityContext.capabilities.drop must include ALL")
    added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
    if added:
        problems.append(f"securityContext.capabilities.add may only hold NET_BIND_SERVICE, not {sorted(added)}")
    if context.get("procMount", "Default") != "Default":
        problems.append("securityContext.procMount must be Default")
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess must be unset or false")
    if any(port.get("hostPort") for port in container.get("ports") or []):
        problems.append("ports[].hostPort must be unset or 0")
    if read_only_root and context.get("readOnlyRootFilesystem") is not True:
        problems.append("securityContext.readOnlyRootFilesystem must be true (memtune's own rule)")
    return problems


def _context_violations(where: str, context: dict[str, Any]) -> list[str]:
    """Rules shared by pod- and container-level security contexts."""
    problems = []
    if context.get("runAsUser") == 0:
        problems.append(f"{where}.runAsUser must not be 0")
    if _seccomp_type(context) == "Unconfined":
        problems.append(f"{where}.seccompProfile.type must not be Unconfined")
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}.seLinuxOptions: only the container_* types, no user or role")
    apparmor = (context.get("appArmorProfile") or {}).get("type", "RuntimeDefault")
    if apparmor not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}.appArmorProfile.type must be RuntimeDefault or Localhost")
    return problems


def _needs_on_every_container(pod: dict[str, Any], what: str, holds: Callable[[dict[str, Any]], bool]) -> list[str]:
    """A pod-level setting missing from the pod must then be set on each container."""
    return [
        f"{list_name}[{container.get('name')}]: {what} is set neither on the pod nor on the container"
        for list_name, container in _containers(pod)
        if not holds(container.get("securityContext") or {})
    ]


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for list_name in CONTAINER_LISTS:
        for container in pod.get(list_name) or []:
            yield list_name, container


def _seccomp_type(context: dict[str, Any]) -> str | None:
    return (context.get("seccompProfile") or {}).get("type")
