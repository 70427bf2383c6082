"""Custom resources and cluster objects the end-to-end tests create."""

from __future__ import annotations

from typing import Any

G = "glmserve.io/v1alpha1"

# Karpenter groups name a node class no cluster has, so a real Karpenter never launches GPU nodes
# for these tests; the deployment tests use static groups, which launch nothing at all.
NO_SUCH_NODE_CLASS = "glmserve-test-no-such-class"


def node_group(name: str, gpu: str, max_nodes: int, provisioner: str = "karpenter") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "gpu": gpu,
        "maxNodes": max_nodes,
        "provisioner": provisioner,
        "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
    }
    if provisioner == "karpenter":
        spec["nodeClassRef"] = {"name": NO_SUCH_NODE_CLASS}
        spec["instanceTypes"] = ["p5.48xlarge" if gpu == "H100" else "p5en.48xlarge"]
    return {"apiVersion": G, "kind": "NodeGroup", "metadata": {"name": name}, "spec": spec}


def model_deployment(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": G, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def fake_node(name: str, group: str, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"glmserve.io/node-group": group}},
        "status": {
            "allocatable": {"nvidia.com/gpu": "8", "cpu": "192"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
