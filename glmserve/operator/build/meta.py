"""Names, labels and owner references shared by every manifest the operator renders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glmserve.common.resource import API_VERSION

MANAGED_BY = {"app.kubernetes.io/managed-by": "glmserve-operator"}
DEPLOYMENT_LABEL = "glmserve.io/model-deployment"
COMPONENT_LABEL = "glmserve.io/component"


@dataclass(frozen=True, slots=True)
class Owner:
    """The custom resource that owns a child; garbage collection deletes the child with it."""

    kind: str
    name: str
    uid: str | None  # None only where the API server stamps none (kmock)

    def reference(self) -> dict[str, Any]:
        ref: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        if self.uid:
            ref["uid"] = self.uid
        return ref


def metadata(
    name: str, owner: Owner, labels: dict[str, str], namespace: str | None = None, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**MANAGED_BY, **labels},
        "ownerReferences": [owner.reference()],
        **extra,
    }
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def deployment_labels(deployment: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "glmserve",
        "app.kubernetes.io/instance": deployment,
        "app.kubernetes.io/component": component,
        **selector(deployment, component),
    }


def selector(deployment: str, component: str) -> dict[str, str]:
    """The labels that select one component's pods (a subset of `deployment_labels`)."""
    return {DEPLOYMENT_LABEL: deployment, COMPONENT_LABEL: component}
