"""A small JSON-in, JSON-out client over the Kubernetes REST API, on top of the `kubernetes` package's auth.

The operator needs a handful of verbs on a handful of resources; dicts in and out keep the backends' manifests
exactly what is sent (and what the tests validate against the real schemas).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import kubernetes

from memtune.operator.backends import Resource

Manifest = dict[str, Any]

CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
PODS = Resource("", "v1", "pods", "Pod")
CRD_CACHE_SECONDS = 60.0
USER_AGENT = "memtune-operator"
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition")


EVENTS = Resource("", "v1", "events", "Event")
# The API server refuses the object itself (schema, CEL, an admission webhook, too large): sending it again
# cannot help, so the job fails with the server's reason instead of retrying.
REFUSED_STATUSES = (400, 413, 422)


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str):
        self.status = status
        self.detail = message
        super().__init__(f"Kubernetes API error {status}: {message}")

    @property
    def refused(self) -> bool:
        return self.status in REFUSED_STATUSES


def _path(resource: Resource, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    path = f"/api/{resource.version}" if not resource.group else f"/apis/{resource.group}/{resource.version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{resource.plural}"
    for part in (name, sub):
        if part:
            path += f"/{part}"
    return path


def _message(error: kubernetes.client.ApiException) -> str:
    """The API server's own explanation (a Status object's message), else the HTTP reason."""
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return error.reason or str(error)


class Kube:
    """Kubernetes API access with the operator's service account (or the kubeconfig outside a cluster)."""

    def __init__(self, api: kubernetes.client.ApiClient):
        api.user_agent = USER_AGENT  # audit logs tell the operator's requests from kubectl's
        self._api = api
        self._crds: dict[str, tuple[float, bool]] = {}  # name → (monotonic time of the check, installed)

    @classmethod
    def connect(cls) -> Kube:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    def _call(
        self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None, text: bool = False
    ) -> Any:
        """One request; the decoded JSON answer (or the raw text, for logs)."""
        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        elif body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._api.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
            )  # fmt: skip
        except kubernetes.client.ApiException as error:
            raise KubeError(error.status or 0, f"{method} {path}: {_message(error)}") from None
        answer = response.data.decode("utf-8", errors="replace")
        if text:
            return answer
        return json.loads(answer) if answer else None

    def get(self, resource: Resource, namespace: str | None, name: str) -> Manifest | None:
        try:
            return self._call("GET", _path(resource, namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def create(self, resource: Resource, namespace: str, body: Manifest) -> bool:
        """Create `body`; False when an object of that name exists already (creation is idempotent by name)."""
        try:
            self._call("POST", _path(resource, namespace), body)
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        return True

    def patch(self, resource: Resource, namespace: str, name: str, body: Manifest, sub: str | None = None) -> None:
        self._call("PATCH", _path(resource, namespace, name, sub), body)

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        """Delete with background propagation (pods go with their job); a missing object is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", _path(resource, namespace, name), body)
        except KubeError as error:
            if error.status != 404:
                raise

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        listing = self._call("GET", _path(PODS, namespace), query=[("labelSelector", selector)])
        return listing.get("items") or []

    def pod_log(self, namespace: str, name: str, container: str, tail_lines: int) -> str:
        query = [("container", container), ("tailLines", str(tail_lines))]
        return self._call("GET", _path(PODS, namespace, name, "log"), query=query, text=True)

    def post_event(self, owner: Manifest, kind: str, reason: str, message: str, component: str) -> None:
        """An Event on `owner` (core/v1), as `kubectl describe` shows it."""
        meta = owner["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
            "involvedObject": {
                "apiVersion": owner.get("apiVersion"),
                "kind": owner.get("kind"),
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": component},
            "reportingComponent": component,
        }
        self.create(EVENTS, body["metadata"]["namespace"], body)

    def has_crd(self, name: str) -> bool:
        """Whether a CRD is installed; remembered for a minute, as every job's resync asks (and CRDs are big)."""
        checked_at, found = self._crds.get(name, (-math.inf, False))
        if time.monotonic() - checked_at > CRD_CACHE_SECONDS:
            found = self.get(CRDS, None, name) is not None
            self._crds[name] = (time.monotonic(), found)
        return found
