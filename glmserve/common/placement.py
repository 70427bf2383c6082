"""Where the ranks of one engine replica run: Ray placement bundles pinned to a node group.

One replica is `data` data-parallel ranks of `tensor` GPUs each (the capacity planner's
`Layout`). Each data-parallel rank is one placement group of `tensor` one-GPU bundles packed
onto a single node (STRICT_PACK: tensor parallelism needs NVLink); a replica wider than a node
is `data` such groups, gang-scheduled, each filling its own node. Every bundle asks for the
pool's node-group resource, which only that group's nodes advertise, so a pool can never land
on the other group's nodes. On a CPU node group a rank is one bundle of that group's cores per
engine instead of a GPU (vLLM's CPU backend), placed by the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from glmserve.common.capacity import Layout
from glmserve.common.roles import Role


def ray_resource(kind: str, name: str) -> str:
    """A custom Ray resource per node group and per pool role, advertised by the nodes that host them."""
    return f"glmserve-{kind}-{name}"


def node_group_resource(node_group: str) -> str:
    return ray_resource("node-group", node_group)


def pool_resource(role: str) -> str:
    return ray_resource("pool", role)


def redundant_experts(num_experts: int, expert_parallel: int) -> int:
    """Redundant expert slots for EPLB: at least one per expert-parallel rank, and enough that
    (experts + redundant) splits evenly over the ranks (160 experts over EP 16 -> 16, so 11 per rank).
    """
    if expert_parallel <= 1:
        return 0
    redundant = expert_parallel
    while (num_experts + redundant) % expert_parallel:
        redundant += 1
    return redundant


@dataclass(frozen=True, slots=True)
class RankGroup:
    """The placement group of one data-parallel rank: `tensor` one-GPU bundles on one node."""

    bundles: tuple[dict[str, float], ...]
    strategy: Literal["STRICT_PACK"] = "STRICT_PACK"

    @property
    def gpus(self) -> int:
        return len(self.bundles)


@dataclass(frozen=True, slots=True)
class PoolPlacement:
    role: Role
    node_group: str
    data_parallel: int
    group: RankGroup

    @property
    def gpus_per_replica(self) -> int:
        return self.data_parallel * self.group.gpus


def pool_placement(role: Role, node_group: str, layout: Layout, cpu_cores: int | None = None) -> PoolPlacement:
    """Pools of a cluster: every rank on a GPU of the pool's node group, or on `cpu_cores` cores of
    one of its nodes when the group is CPU-only."""
    device = {"CPU": float(cpu_cores)} if cpu_cores else {"GPU": 1.0, "CPU": 1.0}
    bundle = {**device, node_group_resource(node_group): 1.0, pool_resource(role): 1.0}
    return PoolPlacement(role, node_group, layout.data, RankGroup(tuple(dict(bundle) for _ in range(layout.tensor))))


def local_pool_placement(role: Role, tensor_parallel: int, device: Literal["CPU", "GPU"]) -> PoolPlacement:
    """Local mode (no node groups): one logical CPU or one GPU per rank, as Ray Serve LLM reserves them."""
    return PoolPlacement(role, "", 1, RankGroup(tuple({device: 1.0} for _ in range(tensor_parallel))))


@dataclass(frozen=True, slots=True)
class Node:
    """Total resources of one node, as Ray reports them."""

    name: str
    resources: dict[str, float]


def _needs(group: RankGroup) -> dict[str, float]:
    need: dict[str, float] = {}
    for bundle in group.bundles:
        for key, amount in bundle.items():
            need[key] = need.get(key, 0.0) + amount
    return need


def infeasible(pools: Sequence[tuple[PoolPlacement, int]], nodes: Sequence[Node]) -> list[str]:
    """Why `replicas` replicas of each pool cannot all be placed on `nodes` (empty: they can).

    First-fit of every rank group onto one node's remaining resources, largest groups first:
    exact for the uniform groups one pool has, and a rank group never spans nodes.
    """
    free = [dict(node.resources) for node in nodes]
    unplaced: dict[str, int] = {}
    for placement, replicas in sorted(pools, key=lambda item: -item[0].group.gpus):
        need = _needs(placement.group)
        for _ in range(replicas * placement.data_parallel):
            node = next((r for r in free if all(r.get(k, 0.0) >= v for k, v in need.items())), None)
            if node is None:
                unplaced[placement.role] = unplaced.get(placement.role, 0) + 1
                continue
            for key, amount in need.items():
                node[key] -= amount
    problems = []
    for placement, replicas in pools:
        if missing := unplaced.get(placement.role):
            where = f"node group {placement.node_group!r}" if placement.node_group else "the cluster"
            kind = "GPU" if any("GPU" in b for b in placement.group.bundles) else "CPU"
            group_nodes = [
                n
                for n in nodes
                if not placement.node_group or n.resources.get(node_group_resource(placement.node_group), 0) > 0
            ]
            problems.append(
                f"{placement.role}: {missing} of {replicas * placement.data_parallel} rank groups of "
                f"{placement.group.gpus} {kind}s find no room on {where} ({len(group_nodes)} node(s), "
                f"{sum(n.resources.get(kind, 0) for n in group_nodes):g} {kind}s in all)"
            )
    return problems
