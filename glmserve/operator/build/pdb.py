"""PodDisruptionBudgets: node drains (Karpenter consolidation, upgrades) take one replica at a time."""

from __future__ import annotations

from typing import Any

from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import deployment_labels, metadata, selector


def _pdb(inputs: DeploymentInputs, component: str, max_unavailable: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(
            f"{inputs.name}-{component}", inputs.owner, deployment_labels(inputs.name, component), inputs.namespace
        ),
        "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": selector(inputs.name, component)}},
    }


def build_pdbs(inputs: DeploymentInputs) -> list[dict[str, Any]]:
    """One per component; a GPU replica's pods go together, so its budget is one replica's nodes.

    The singleton Ray head gets none: a budget of zero would block every drain of its node.
    """
    budgets = [_pdb(inputs, "router", 1), _pdb(inputs, "ingress", 1)]
    budgets += [_pdb(inputs, role, layout.nodes_per_replica) for role, layout in inputs.plan.pools().items()]
    return budgets
