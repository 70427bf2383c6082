"""Reconciling one NodeGroup: its Karpenter NodePool (if any) and a status read from its nodes."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from glmserve.common.gpus import get_gpu
from glmserve.common.nodegroup import NodeGroupSpec, NodeGroupStatus
from glmserve.operator.build.meta import Owner
from glmserve.operator.build.nodepool import API_VERSION as NODEPOOL_API_VERSION
from glmserve.operator.build.nodepool import build_nodepool
from glmserve.operator.cluster import Cluster
from glmserve.operator.conditions import set_condition, spec_problems
from glmserve.operator.objects import Observed
from glmserve.operator.observe import group_nodes

KIND = "NodeGroup"


def reconcile_node_group(cluster: Cluster, group: Observed, nodes: list[dict[str, Any]]) -> NodeGroupStatus:
    """Apply the NodePool (or remove a stale one) and report the group's nodes. Idempotent."""
    try:
        spec = NodeGroupSpec.model_validate(group.spec)
    except ValidationError as exc:
        conditions = set_condition(
            group.conditions,
            "Ready",
            status=False,
            reason="InvalidSpec",
            message=spec_problems(exc),
            generation=group.generation,
        )
        return NodeGroupStatus(conditions=conditions, observed_generation=group.generation)
    node_pool = None
    if spec.provisioner == "karpenter":
        cluster.apply(build_nodepool(group.name, spec, Owner(KIND, group.name, group.uid)))
        node_pool = group.name
    elif cluster.serves(NODEPOOL_API_VERSION, "NodePool"):
        _remove_own_node_pool(cluster, group.name)
    members = group_nodes(nodes, spec.node_selector(group.name))
    ready = [n for n in members if n["ready"]]
    enough = len(ready) >= spec.min_nodes
    message = f"{len(ready)} of {len(members)} node(s) ready, {spec.min_nodes} required"
    if spec.provisioner == "karpenter" and not spec.min_nodes:
        message += "; Karpenter launches nodes for pending pods"
    conditions = set_condition(
        group.conditions,
        "Ready",
        status=enough,
        reason="NodesReady" if enough else "WaitingForNodes",
        message=message,
        generation=group.generation,
    )
    gpu = get_gpu(spec.gpu) if spec.gpu else None
    return NodeGroupStatus(
        gpu_memory_gb=gpu.memory_gb if gpu else None,
        gpu_bandwidth_tb_per_s=gpu.bandwidth_tb_per_s if gpu else None,
        nodes=len(members),
        ready_nodes=len(ready),
        allocatable_gpus=sum(n["gpus"] for n in ready),
        node_pool=node_pool,
        conditions=conditions,
        observed_generation=group.generation,
    )


def _remove_own_node_pool(cluster: Cluster, name: str) -> None:
    """A group switched from karpenter to static keeps its nodes; its NodePool goes (ours only)."""
    pool = cluster.get(NODEPOOL_API_VERSION, "NodePool", name)
    owners = (pool or {}).get("metadata", {}).get("ownerReferences") or []
    if any(o.get("kind") == KIND and o.get("name") == name for o in owners):
        cluster.delete(NODEPOOL_API_VERSION, "NodePool", name)
