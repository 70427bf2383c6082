"""Pure readings of live objects: nodes, pods, the RayService, the router Deployment and its metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from glmserve.common.deployment_plan import PlanStatus
from glmserve.common.deployment_status import ColdStarts, ReadyReplicas
from glmserve.common.metrics import ROUTER_COLD_START, ROUTER_LAST_COLD_START
from glmserve.operator.build.meta import COMPONENT_LABEL, DEPLOYMENT_LABEL


def _true(obj: dict[str, Any], condition: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == condition and c.get("status") == "True" for c in conditions)


def node_summary(node: dict[str, Any], gpu_resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    """What a NodeGroup's status needs of one Node (kept small: it lives in an in-memory index)."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return {
        "name": node["metadata"]["name"],
        "labels": dict(node["metadata"].get("labels") or {}),
        "ready": _true(node, "Ready"),
        "gpus": int(allocatable.get(gpu_resource, 0)),
    }


def group_nodes(summaries: list[dict[str, Any]], selector: dict[str, str]) -> list[dict[str, Any]]:
    """The nodes carrying every label of the group's selector."""
    return [n for n in summaries if all(n["labels"].get(k) == v for k, v in selector.items())]


def rayservice_ready(rayservice: dict[str, Any] | None) -> tuple[bool, str]:
    """KubeRay >= 1.3 sets a Ready condition; older ones report serviceStatus Running."""
    if rayservice is None:
        return False, "the RayService does not exist yet"
    status = rayservice.get("status") or {}
    if _true(rayservice, "Ready") or status.get("serviceStatus") == "Running":
        return True, "the Serve application is running"
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    states = ", ".join(f"{name}: {app.get('status', 'unknown')}" for name, app in apps.items())
    return False, f"the Serve application is not running yet ({states or 'no status from KubeRay yet'})"


def _pod_ready(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and _true(pod, "Ready")


def ready_replicas(deployment: str, plan: PlanStatus, pods: list[dict[str, Any]], router_ready: int) -> ReadyReplicas:
    """Replicas whose worker pods are ready: a replica spans nodes, or several share one node."""
    ready_pods: dict[str, int] = {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if labels.get(DEPLOYMENT_LABEL) == deployment and _pod_ready(pod):
            component = labels.get(COMPONENT_LABEL, "")
            ready_pods[component] = ready_pods.get(component, 0) + 1
    counts = {
        role: min(layout.max_replicas, ready_pods.get(role, 0) * layout.gpus_per_node // layout.gpus_per_replica)
        for role, layout in plan.pools().items()
    }
    return ReadyReplicas(prefill=counts["prefill"], decode=counts["decode"], router=router_ready)


def router_pods(deployment: str, pods: list[dict[str, Any]]) -> list[str]:
    """The ready router pods of `deployment` (every shard's), by name."""
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if (pod["metadata"].get("labels") or {}).get(DEPLOYMENT_LABEL) == deployment
        and (pod["metadata"].get("labels") or {}).get(COMPONENT_LABEL) == "router"
        and _pod_ready(pod)
    )


def cold_starts(expositions: dict[str, str], model: str) -> ColdStarts | None:
    """`model`'s cold starts from router pods' /metrics (pod -> Prometheus text): each router replica
    times the starts its own waiting requests saw, so the one that timed the most speaks."""
    found: list[ColdStarts] = []
    for pod, text in expositions.items():
        try:
            samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        except ValueError:  # not a Prometheus exposition (what answered was not the router)
            continue
        values = {s.name: s.value for s in samples if s.labels.get("model") == model}
        count = int(values.get(f"{ROUTER_COLD_START.name}_count", 0))
        last = values.get(ROUTER_LAST_COLD_START.name)
        if count and last is not None:
            mean = values[f"{ROUTER_COLD_START.name}_sum"] / count
            found.append(ColdStarts(count=count, last_seconds=last, mean_seconds=round(mean, 3), router_pod=pod))
    return max(found, key=lambda c: (c.count, c.router_pod), default=None)
