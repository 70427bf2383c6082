"""Kubernetes Events about our objects (`kubectl describe` and `kubectl get events` show them)."""

from __future__ import annotations

from typing import Any, Literal

COMPONENT = "glmserve-operator"
# Cluster-scoped objects' Events live here, as kubectl and kopf expect.
CLUSTER_EVENTS_NAMESPACE = "default"


def build_event(
    involved: dict[str, Any],
    *,
    type_: Literal["Normal", "Warning"],
    reason: str,
    message: str,
    time: str,
    suffix: str,
    instance: str,
) -> dict[str, Any]:
    """A core/v1 Event; `suffix` makes its name unique, as client-go's recorders do."""
    meta = involved["metadata"]
    namespace = meta.get("namespace")
    reference = {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"]}
    if namespace:
        reference["namespace"] = namespace
    if meta.get("uid"):
        reference["uid"] = meta["uid"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{suffix}", "namespace": namespace or CLUSTER_EVENTS_NAMESPACE},
        "involvedObject": reference,
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": f"glmserve.io/{COMPONENT}",
        "reportingInstance": instance,
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    }
