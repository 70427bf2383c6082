"""The operator's only door to the API server: create-or-patch, read, list and delete any kind, and
read a pod's HTTP endpoint through the API server's proxy.

Built on the `kubernetes` client's DynamicClient, whose discovery also tells which optional APIs
(KubeRay, Karpenter, the Prometheus Operator) this cluster serves.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kubernetes
import urllib3
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient, Resource
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

MERGE_PATCH = "application/merge-patch+json"
# Fields the API server refuses to change in place (422 "field is immutable"): a manifest that
# changes one replaces the object. The router Service became headless; operators before that
# gave it a virtual IP, and their deployments would otherwise fail to reconcile for good.
IMMUTABLE: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    ("v1", "Service"): (("spec", "clusterIP"),),
    ("apps/v1", "Deployment"): (("spec", "selector"),),
}

log = logging.getLogger(__name__)


def load_config() -> None:
    """The pod's service account in a cluster, else the kubeconfig named by KUBECONFIG (read now,
    not when the kubernetes package was imported)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def _raw(_client: DynamicClient, data: dict[str, Any]) -> dict[str, Any]:
    """Keep responses as plain dicts (a list need not name its `kind`; kmock's does not)."""
    return data


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` already holds everything `desired` says (the server may add defaults)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return bool(live == desired)


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def immutable_changes(live: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """The fields `desired` sets that `live` holds otherwise and cannot change in place."""
    paths = IMMUTABLE.get((desired["apiVersion"], desired["kind"]), ())
    return [
        ".".join(path)
        for path in paths
        if _at(desired, path) is not None and not contains(_at(live, path), _at(desired, path))
    ]


class Cluster:
    def __init__(self, api: ApiClient, discovery_cache: str) -> None:
        self._dynamic = DynamicClient(api, cache_file=discovery_cache)
        self._core = CoreV1Api(api)

    def _resource(self, api_version: str, kind: str) -> Resource:
        return self._dynamic.resources.get(api_version=api_version, kind=kind)

    def serves(self, api_version: str, kind: str) -> bool:
        try:
            self._resource(api_version, kind)
        except ResourceNotFoundError:
            return False
        return True

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._resource(api_version, kind).get(
                name=name, namespace=namespace, serializer=_raw
            )
            return found
        except NotFoundError:
            return None

    def list(self, api_version: str, kind: str, namespace: str | None = None, **selectors: str) -> list[dict]:
        found = self._resource(api_version, kind).get(namespace=namespace, serializer=_raw, **selectors)
        return list(found.get("items") or [])

    def create(self, manifest: dict[str, Any]) -> None:
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        resource.create(body=manifest, namespace=manifest["metadata"].get("namespace"))

    def apply(self, manifest: dict[str, Any]) -> bool:
        """Create `manifest`, or merge-patch it onto the live object if that differs (replace it if
        what differs cannot change in place). True if written."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        meta = manifest["metadata"]
        namespace = meta.get("namespace")
        try:
            live = resource.get(name=meta["name"], namespace=namespace, serializer=_raw)
        except NotFoundError:
            resource.create(body=manifest, namespace=namespace)
            return True
        if contains(live, manifest):
            return False
        if changed := immutable_changes(live, manifest):
            # Deleted and created again at once: a deletion still pending makes the create fail
            # with 409, which the caller retries, and the next apply creates it.
            log.info("replacing %s %s/%s: %s cannot change in place", manifest["kind"], namespace, meta["name"],
                     ", ".join(changed))  # fmt: skip
            resource.delete(name=meta["name"], namespace=namespace)
            resource.create(body=manifest, namespace=namespace)
            return True
        resource.patch(body=manifest, name=meta["name"], namespace=namespace, content_type=MERGE_PATCH)
        return True

    def patch_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        resource = self._resource(body["apiVersion"], body["kind"])
        resource.status.patch(
            body={"status": status}, name=meta["name"], namespace=meta.get("namespace"), content_type=MERGE_PATCH
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        try:
            self._resource(api_version, kind).delete(name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True

    def pod_get(self, name: str, namespace: str, port: int, path: str, timeout_s: float = 2.0) -> str | None:
        """GET `path` of a pod's `port` through the API server (pods/proxy: granted by RBAC, so no
        network policy needs to admit the operator's pods); None if it does not answer."""
        try:
            text: str = self._core.connect_get_namespaced_pod_proxy_with_path(
                f"{name}:{port}", namespace, path.lstrip("/"), _request_timeout=timeout_s
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.info("could not read %s/%s:%d%s: %s", namespace, name, port, path, exc)
            return None
        return text
