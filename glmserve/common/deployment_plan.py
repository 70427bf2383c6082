"""From a ModelDeployment and its NodeGroups to the capacity plan, and the plan's wire form.

`PlanStatus` is both the `status.plan` of the custom resource and the `planner` argument the
serving side's app builder receives, so both sides read the layout from one schema.
"""

from __future__ import annotations

from pydantic import Field

from glmserve.common.capacity import MemoryPerGpu, Workload, pool_nodes
from glmserve.common.deployment import ModelDeploymentSpec, Parallelism
from glmserve.common.errors import ConfigError
from glmserve.common.gpus import GB, GpuType, get_gpu
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.planner import DeploymentPlan, GroupCapacity, PoolPlan, PoolRequest, plan_deployment
from glmserve.common.resource import Spec


class MemoryStatus(Spec):
    """Per-GPU memory of one replica in GB, as the planner computed it."""

    usable: float = Field(description="HBM vLLM may use")
    weights: float = Field(description="this GPU's shard of the weights")
    kv_cache: float = Field(description="KV cache for maxConcurrency sequences at maxContext")
    activations: float = Field(description="peak activations of one chunked-prefill step")
    runtime: float = Field(description="CUDA context, NCCL buffers, CUDA graphs")

    @classmethod
    def of(cls, memory: MemoryPerGpu) -> MemoryStatus:
        return cls(
            usable=round(memory.usable / GB, 2),
            weights=round(memory.weights / GB, 2),
            kv_cache=round(memory.kv_cache / GB, 2),
            activations=round(memory.activations / GB, 2),
            runtime=round(memory.runtime / GB, 2),
        )


class PoolLayoutStatus(Spec):
    """The layout the planner chose for one pool."""

    node_group: str = Field(description="NodeGroup the pool runs on")
    gpu: GpuType = Field(description="GPU type of that group")
    gpus_per_node: int = Field(ge=1, description="GPUs per node of that group")
    gpus_per_replica: int = Field(ge=1, description="GPUs one replica uses")
    nodes_per_replica: int = Field(ge=1, description="nodes one replica spans")
    parallelism: Parallelism = Field(description="tensor, data and expert sizes of one replica")
    min_replicas: int = Field(ge=1, description="replicas kept when idle")
    max_replicas: int = Field(ge=1, description="replicas the node group must be able to hold")
    memory_per_gpu_gb: MemoryStatus = Field(alias="memoryPerGpuGB", description="per-GPU memory of one replica")

    def nodes(self, replicas: int) -> int:
        return pool_nodes(replicas, self.gpus_per_replica, self.gpus_per_node)

    @classmethod
    def of(cls, plan: PoolPlan) -> PoolLayoutStatus:
        replica = plan.replica
        if replica is None:
            raise ValueError(f"pool {plan.request.name} has no layout")
        lay = replica.layout
        return cls(
            node_group=plan.request.node_group,
            gpu=replica.gpu.name,
            gpus_per_node=replica.gpus_per_node,
            gpus_per_replica=replica.gpus,
            nodes_per_replica=replica.nodes,
            parallelism=Parallelism(tensor=lay.tensor, data=lay.data, expert=lay.expert),
            min_replicas=plan.request.min_replicas,
            max_replicas=plan.request.max_replicas,
            memory_per_gpu_gb=MemoryStatus.of(replica.memory),
        )


class PlanStatus(Spec):
    """The capacity plan of a deployment: one layout per pool."""

    prefill: PoolLayoutStatus = Field(description="the prefill pool's layout")
    decode: PoolLayoutStatus = Field(description="the decode pool's layout")

    @classmethod
    def of(cls, plan: DeploymentPlan) -> PlanStatus:
        layouts = {pool.request.name: PoolLayoutStatus.of(pool) for pool in plan.pools}
        return cls(prefill=layouts["prefill"], decode=layouts["decode"])

    def pools(self) -> dict[str, PoolLayoutStatus]:
        return {"prefill": self.prefill, "decode": self.decode}


class ServeAppArgs(Spec):
    """`args` of the Serve application in the RayService: what `app_builder` receives."""

    deployment: ModelDeploymentSpec = Field(description="the ModelDeployment's spec")
    planner: PlanStatus = Field(description="the capacity plan the operator chose")


def plan_for(spec: ModelDeploymentSpec, groups: dict[str, NodeGroupSpec]) -> DeploymentPlan:
    """The capacity plan of `spec` on `groups` (NodeGroup specs by name)."""
    missing = sorted({p.node_group for p in spec.pools().values()} - set(groups))
    if missing:
        raise ConfigError(f"NodeGroup(s) {', '.join(missing)} not found", code="NodeGroupNotFound")
    model = spec.model.resolve()
    requests = []
    for name, pool in spec.pools().items():
        group = groups[pool.node_group]
        workload = Workload(
            model=model,
            context=model.max_context,
            concurrency=pool.max_concurrency,
            kv_precision=spec.model.kv_cache_precision,
            mtp=spec.mtp.enabled,
        )
        requests.append(
            PoolRequest(
                name=name,
                node_group=pool.node_group,
                gpu=get_gpu(group.gpu),
                gpus_per_node=group.gpus_per_node,
                min_replicas=pool.min_replicas,
                max_replicas=pool.max_replicas,
                workload=workload,
                layout=pool.parallelism.layout() if pool.parallelism else None,
            )
        )
    capacity = {name: GroupCapacity(name, g.max_nodes, g.gpus_per_node, g.gpu) for name, g in groups.items()}
    return plan_deployment(requests, capacity)
