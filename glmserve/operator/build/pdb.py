"""PodDisruptionBudgets: node drains (Karpenter consolidation, upgrades) take one replica at a time."""

from __future__ import annotations

from typing import Any

from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import deployment_labels, metadata, selector


def _pdb(
    inputs: DeploymentInputs, name: str, labels: dict[str, str], pods: dict[str, str], max_unavailable: int
) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, inputs.owner, labels, inputs.namespace),
        "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": pods}},
    }


def _component_pdb(inputs: DeploymentInputs, component: str, max_unavailable: int) -> dict[str, Any]:
    labels = deployment_labels(inputs.name, component)
    return _pdb(inputs, f"{inputs.name}-{component}", labels, selector(inputs.name, component), max_unavailable)


def build_pdbs(inputs: DeploymentInputs) -> list[dict[str, Any]]:
    """One per component, and one per router shard (a drain takes one replica of each shard at a
    time); a GPU replica's pods go together, so its budget is one replica's nodes.

    The singleton Ray head gets none: a budget of zero would block every drain of its node.
    """
    budgets = [_pdb(inputs, shard.name, shard.labels(), shard.selector(), 1) for shard in inputs.router_shards]
    budgets.append(_component_pdb(inputs, "ingress", 1))
    budgets += [_component_pdb(inputs, role, layout.nodes_per_replica) for role, layout in inputs.plan.pools().items()]
    return budgets
