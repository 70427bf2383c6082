"""A NodeGroup with provisioner `karpenter` -> a `karpenter.sh/v1` NodePool."""

from __future__ import annotations

from typing import Any

from glmserve.common.gpus import get_gpu
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.operator.build.meta import Owner, metadata

# GPU nodes take minutes to boot and load hundreds of GB of weights: consolidate only empty ones,
# and only after they have been idle long enough to ride out a short lull in traffic.
CONSOLIDATE_AFTER = "30m"
API_VERSION = "karpenter.sh/v1"


def build_nodepool(name: str, spec: NodeGroupSpec, owner: Owner) -> dict[str, Any]:
    if spec.node_class_ref is None:
        raise ValueError(f"node group {name} has no nodeClassRef; only karpenter groups get a NodePool")
    requirements: list[dict[str, Any]] = [
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(spec.instance_types)},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": [spec.capacity_type]},
    ]
    if spec.zones:
        requirements.append({"key": "topology.kubernetes.io/zone", "operator": "In", "values": list(spec.zones)})
    node_spec: dict[str, Any] = {
        "nodeClassRef": spec.node_class_ref.wire(),
        "requirements": requirements,
        # Weights are pulled once per node; recycling GPU nodes monthly costs a reload per month.
        "expireAfter": "720h",
    }
    if spec.taints:
        node_spec["taints"] = [taint.wire() for taint in spec.taints]
    pool: dict[str, Any] = {
        "template": {"metadata": {"labels": spec.node_selector(name)}, "spec": node_spec},
        "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": CONSOLIDATE_AFTER},
    }
    if spec.min_nodes and spec.min_nodes == spec.max_nodes:
        # A fixed fleet: Karpenter keeps exactly this many nodes, busy or not.
        pool["replicas"] = spec.min_nodes
        pool["limits"] = {"nodes": str(spec.max_nodes)}
    else:
        per_node = (spec.cpu.cores, "cpu") if spec.cpu else (spec.gpus_per_node, get_gpu(spec.device).resource)
        pool["limits"] = {per_node[1]: str(spec.max_nodes * per_node[0])}
    return {
        "apiVersion": API_VERSION,
        "kind": "NodePool",
        "metadata": metadata(name, owner, {"glmserve.io/node-group": name}),
        "spec": pool,
    }
