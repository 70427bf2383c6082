"""The operator's only door to the API server: create-or-patch, read, list and delete any kind.

Built on the `kubernetes` client's DynamicClient, whose discovery also tells which optional APIs
(KubeRay, Karpenter, the Prometheus Operator) this cluster serves.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient
from kubernetes.dynamic import DynamicClient, Resource
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

MERGE_PATCH = "application/merge-patch+json"


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


class Cluster:
    def __init__(self, api: ApiClient, discovery_cache: str) -> None:
        self._dynamic = DynamicClient(api, cache_file=discovery_cache)

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
        """Create `manifest`, or merge-patch it onto the live object if that differs. True if written."""
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
