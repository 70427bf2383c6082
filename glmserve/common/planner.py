"""The capacity planner: the smallest layout per pool, and whether the node groups can host them.

Used by the operator (a ModelDeployment's `Planned` condition) and by `glmserve plan`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from glmserve.common.capacity import GPU_MEMORY_UTILIZATION, Layout, ReplicaPlan, Workload, fit, pool_nodes
from glmserve.common.gpus import GpuSpec
from glmserve.common.layouts import candidate_layouts, check_layout


@dataclass(frozen=True, slots=True)
class Search:
    """The layouts tried for one replica, smallest first; the last one is chosen if it fits."""

    tried: tuple[ReplicaPlan, ...]

    @property
    def chosen(self) -> ReplicaPlan | None:
        return self.tried[-1] if self.tried and self.tried[-1].memory.fits else None

    def explain(self) -> str:
        w = self.tried[0].workload
        gpu = self.tried[0].gpu
        head = (
            f"{w.model.name}: {w.model.arch.total_params(include_mtp=w.mtp) / 1e9:.2f}B parameters in"
            f" {w.model.precision} ({'with' if w.mtp else 'without'} the MTP layer), KV cache {w.kv_precision},"
            f" {w.concurrency} sequences x {w.context} tokens per replica, on {gpu.name}"
            f" ({gpu.memory_gb:g} GB, {gpu.bandwidth_tb_per_s:g} TB/s; vLLM uses {GPU_MEMORY_UTILIZATION:g} of it)"
        )
        chosen = self.chosen
        tail = f"=> {chosen.gpus} x {gpu.name} per replica ({chosen.nodes} node(s))" if chosen else "=> no layout fits"
        return "\n".join([head, *(plan.explain() for plan in self.tried), tail])


def search(workload: Workload, gpu: GpuSpec, gpus_per_node: int, layout: Layout | None = None) -> Search:
    """Try `layout` alone, or every valid layout from the smallest until one fits."""
    arch = workload.model.arch
    if layout is not None:
        check_layout(arch, gpus_per_node, layout)
        return Search((fit(workload, gpu, gpus_per_node, layout),))
    tried: list[ReplicaPlan] = []
    for candidate in candidate_layouts(arch, gpus_per_node):
        tried.append(fit(workload, gpu, gpus_per_node, candidate))
        if tried[-1].memory.fits:
            break
    return Search(tuple(tried))


@dataclass(frozen=True, slots=True)
class PoolRequest:
    """A pool of identical replicas (prefill or decode) on one node group."""

    name: str
    node_group: str
    gpu: GpuSpec
    gpus_per_node: int
    min_replicas: int
    max_replicas: int
    workload: Workload
    layout: Layout | None = None


@dataclass(frozen=True, slots=True)
class PoolPlan:
    request: PoolRequest
    search: Search

    @property
    def replica(self) -> ReplicaPlan | None:
        return self.search.chosen

    def nodes(self, replicas: int) -> int:
        return pool_nodes(replicas, self.replica.gpus, self.request.gpus_per_node) if self.replica else 0


@dataclass(frozen=True, slots=True)
class GroupCapacity:
    name: str
    max_nodes: int
    gpus_per_node: int
    gpu: str


@dataclass(frozen=True, slots=True)
class DeploymentPlan:
    pools: tuple[PoolPlan, ...]
    shortfalls: tuple[str, ...]  # empty when the deployment is feasible

    @property
    def feasible(self) -> bool:
        return not self.shortfalls


def plan_deployment(pools: list[PoolRequest], groups: dict[str, GroupCapacity]) -> DeploymentPlan:
    """Plan each pool, then check that every node group can hold its pools at their maximum size."""
    plans = tuple(PoolPlan(pool, search(pool.workload, pool.gpu, pool.gpus_per_node, pool.layout)) for pool in pools)
    shortfalls = [_no_fit(plan) for plan in plans if plan.replica is None]
    needed: dict[str, list[PoolPlan]] = defaultdict(list)
    for plan in plans:
        if plan.replica is not None:
            needed[plan.request.node_group].append(plan)
    for group_name, group_plans in needed.items():
        group = groups[group_name]
        nodes = sum(p.nodes(p.request.max_replicas) for p in group_plans)
        if nodes > group.max_nodes:
            unit = _unit(group.gpu)
            uses = " + ".join(_usage(p, unit) for p in group_plans)
            short = nodes - group.max_nodes
            per_node = f"{group.gpus_per_node} {group.gpu}" + ("" if unit == "GPUs" else f" {unit}")
            shortfalls.append(
                f"node group {group_name} allows at most {group.max_nodes} node(s) of {per_node}"
                f" but {uses} need {nodes} node(s): short by {short} node(s)"
                f" ({short * group.gpus_per_node} {group.gpu} {unit})"
            )
    return DeploymentPlan(plans, tuple(shortfalls))


def _unit(device: str) -> str:
    """What a slot of a node is: a GPU, or one engine's share of a CPU node."""
    return "engine slots" if device == "CPU" else "GPUs"


def _usage(plan: PoolPlan, unit: str) -> str:
    gpus = plan.replica.gpus if plan.replica else 0
    replicas = plan.request.max_replicas
    return f"{plan.request.name} {replicas} x {gpus} {unit} ({plan.nodes(replicas)} node(s))"


def _no_fit(plan: PoolPlan) -> str:
    last = plan.search.tried[-1]
    w = plan.request.workload
    what = f"{w.model.name} ({w.model.precision}) at {w.context} tokens x {w.concurrency} sequences"
    if plan.request.layout is not None:
        return (
            f"{plan.request.name}: {what} does not fit {last.layout.describe()} on {last.gpus} {last.gpu.name}:"
            f" needs {last.memory.total / 1e9:.2f} GB per GPU, {last.memory.usable / 1e9:.2f} GB usable"
        )
    return f"{plan.request.name}: {what} fits no layout of {last.gpu.name} nodes (largest tried: {last.gpus} GPUs)"
