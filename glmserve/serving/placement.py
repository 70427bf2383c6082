"""Refuse a layout the Ray cluster cannot hold before deploying anything.

Ray would otherwise keep the engines' placement groups pending forever (the symptom: a
deployment "starting" with no error). The arithmetic is glmserve.common.placement's.
"""

from __future__ import annotations

from collections.abc import Sequence

import ray

from glmserve.common.errors import ConfigError
from glmserve.common.placement import Node, PoolPlacement, infeasible


def cluster_nodes() -> list[Node]:
    return [Node(n["NodeManagerAddress"], dict(n["Resources"])) for n in ray.nodes() if n["Alive"]]


def head_node_id() -> str | None:
    """The Ray head's node id (the node holding Ray's internal head resource)."""
    return next((n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]), None)


def check_fits(pools: Sequence[tuple[PoolPlacement, int]], nodes: Sequence[Node] | None = None) -> None:
    problems = infeasible(pools, cluster_nodes() if nodes is None else nodes)
    if problems:
        raise ConfigError("the cluster cannot hold this layout: " + "; ".join(problems))
