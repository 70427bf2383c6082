"""An in-memory stand-in for the API server's store, so that `cluster up` renders a deployment
through the operator's own reconciler (`reconcile_deployment`), not a second copy of it."""

from __future__ import annotations

import builtins
import copy
from typing import Any

from glmserve.operator.cluster import Cluster

Key = tuple[str, str, str | None, str]


def _key(manifest: dict[str, Any]) -> Key:
    meta = manifest["metadata"]
    return manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]


class StoredObjects(Cluster):
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects: dict[Key, dict[str, Any]] = {_key(o): copy.deepcopy(o) for o in objects}

    def serves(self, api_version: str, kind: str) -> bool:
        return True

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get((api_version, kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None = None, **selectors: str) -> list[dict]:
        wanted = dict(s.split("=", 1) for s in selectors.get("label_selector", "").split(",") if s)
        return [
            o
            for (version, k, ns, _), o in self.objects.items()
            if (version, k) == (api_version, kind)
            and (namespace is None or ns == namespace)
            and wanted.items() <= (o["metadata"].get("labels") or {}).items()
        ]

    def create(self, manifest: dict[str, Any]) -> None:
        self.objects[_key(manifest)] = copy.deepcopy(manifest)

    def apply(self, manifest: dict[str, Any]) -> bool:
        self.create(manifest)
        return True

    def patch_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        self.objects[_key(body)]["status"] = status

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        return self.objects.pop((api_version, kind, namespace, name), None) is not None

    def of_kind(self, kind: str) -> builtins.list[dict[str, Any]]:
        return [o for (_, k, _, _), o in self.objects.items() if k == kind]
