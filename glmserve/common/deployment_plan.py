"""From a ModelDeployment and its NodeGroups to the capacity plan, and the plan's wire form.

`PlanStatus` is both the `status.plan` of the custom resource and the `planner` argument the
serving side's app builder receives, so both sides read the layout from one schema.
"""

from __future__ import annotations

from pydantic import Field

from glmserve.common.autoscaling import PoolTargets, prefill_tokens_per_s
from glmserve.common.capacity import Layout, MemoryPerGpu, Workload, kv_tokens_held, pool_nodes
from glmserve.common.deployment import ModelDeploymentSpec, Parallelism
from glmserve.common.errors import ConfigError
from glmserve.common.gpus import GB, DeviceType, GpuSpec, cpu_device, get_gpu
from glmserve.common.nodegroup import GIB, NodeGroupSpec
from glmserve.common.planner import DeploymentPlan, GroupCapacity, PoolPlan, PoolRequest, plan_deployment
from glmserve.common.resource import Spec
from glmserve.common.roles import WorkerRole


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


class CpuRankStatus(Spec):
    """What one engine rank of a pool on a CPU node group gets."""

    cores: int = Field(ge=1, description="CPU cores of the rank (its placement bundle)")
    kv_cache_gib: float = Field(alias="kvCacheGiB", ge=0.001, description="its KV cache in GiB")


class PoolLayoutStatus(Spec):
    """The layout the planner chose for one pool. On a CPU node group a "GPU" is one engine rank's
    slot (cpu.cores / enginesPerNode cores), so the same slot arithmetic places both kinds."""

    node_group: str = Field(description="NodeGroup the pool runs on")
    gpu: DeviceType = Field(description="GPU type of that group, or CPU")
    gpus_per_node: int = Field(ge=1, description="GPUs per node of that group (CPU groups: enginesPerNode)")
    gpus_per_replica: int = Field(ge=1, description="GPUs (CPU groups: engine ranks) one replica uses")
    nodes_per_replica: int = Field(ge=1, description="nodes one replica spans")
    parallelism: Parallelism = Field(description="tensor, data and expert sizes of one replica")
    min_replicas: int = Field(ge=0, description="replicas kept when idle (0: scaled to zero)")
    max_replicas: int = Field(ge=1, description="replicas the node group must be able to hold")
    memory_per_gpu_gb: MemoryStatus = Field(alias="memoryPerGpuGB", description="per-GPU memory of one replica")
    cpu: CpuRankStatus | None = Field(None, description="CPU node groups: cores and KV cache of each engine rank")

    def nodes(self, replicas: int) -> int:
        return pool_nodes(replicas, self.gpus_per_replica, self.gpus_per_node)

    @classmethod
    def of(cls, plan: PoolPlan, group: NodeGroupSpec) -> PoolLayoutStatus:
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
            cpu=CpuRankStatus(cores=group.cpu.cores_per_engine, kv_cache_gib=group.cpu.kv_cache_gib)
            if group.cpu
            else None,
        )


class PlanStatus(Spec):
    """The capacity plan of a deployment: one layout per pool."""

    prefill: PoolLayoutStatus = Field(description="the prefill pool's layout")
    decode: PoolLayoutStatus = Field(description="the decode pool's layout")

    @classmethod
    def of(cls, plan: DeploymentPlan, groups: dict[str, NodeGroupSpec]) -> PlanStatus:
        layouts = {pool.request.name: PoolLayoutStatus.of(pool, groups[pool.request.node_group]) for pool in plan.pools}
        return cls(prefill=layouts["prefill"], decode=layouts["decode"])

    def pools(self) -> dict[WorkerRole, PoolLayoutStatus]:
        return {"prefill": self.prefill, "decode": self.decode}


class ServeAppArgs(Spec):
    """`args` of the Serve application in the RayService: what `app_builder` receives."""

    deployment: ModelDeploymentSpec = Field(description="the ModelDeployment's spec")
    planner: PlanStatus = Field(description="the capacity plan the operator chose")


def pool_targets(spec: ModelDeploymentSpec, role: WorkerRole, layout: PoolLayoutStatus) -> PoolTargets | None:
    """What one autoscaled pool scales on: its `autoscaling` targets, the unset ones from the plan
    (a decode replica runs the maxConcurrency sequences its KV cache was sized for; a prefill
    replica prefills what its GPUs' compute allows; on CPU none is known). None: a fixed count."""
    pool = spec.pools()[role]
    scaling = pool.autoscaling
    if scaling is None:
        return None
    rate = scaling.prefill_tokens_per_second
    if rate is None and layout.gpu != "CPU":
        rate = prefill_tokens_per_s(spec.model.resolve(), get_gpu(layout.gpu), layout.gpus_per_replica)
    return PoolTargets(
        role=role,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        ttft_slo_s=scaling.ttft_slo_seconds,
        itl_slo_s=scaling.itl_slo_seconds,
        prefill_tokens_per_s=rate,
        running_per_replica=scaling.running_per_replica or pool.max_concurrency,
        kv_cache_usage=scaling.kv_cache_usage,
        scale_up_at=scaling.scale_up_at,
        scale_down_at=scaling.scale_down_at,
        upscale_delay_s=scaling.upscale_delay_seconds,
        downscale_delay_s=scaling.downscale_delay_seconds,
        lead_s=scaling.lead_seconds,
    )


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
            kv_cache_bytes=int(group.cpu.kv_cache_gib * GIB) if group.cpu else None,
        )
        layout = pool.parallelism.layout() if pool.parallelism else None
        if group.cpu:
            _check_cpu_kv_cache(workload, pool.node_group)
            # One engine per replica unless set: tensor parallelism buys a CPU engine little.
            layout = layout or Layout(1)
        requests.append(
            PoolRequest(
                name=name,
                node_group=pool.node_group,
                gpu=_device(group),
                gpus_per_node=group.slots_per_node,
                min_replicas=pool.min_replicas,
                max_replicas=pool.max_replicas,
                workload=workload,
                layout=layout,
            )
        )
    capacity = {name: GroupCapacity(name, g.max_nodes, g.slots_per_node, g.device) for name, g in groups.items()}
    return plan_deployment(requests, capacity)


def _device(group: NodeGroupSpec) -> GpuSpec:
    return cpu_device(group.cpu.memory_per_engine_bytes) if group.cpu else get_gpu(group.device)


def _check_cpu_kv_cache(workload: Workload, node_group: str) -> None:
    """vLLM refuses to start an engine whose KV cache cannot hold one sequence at full context."""
    held = kv_tokens_held(workload)
    if held < workload.context:
        raise ConfigError(
            f"NodeGroup {node_group}: cpu.kvCacheGiB holds {held} tokens of {workload.model.name}, fewer than"
            f" model.maxContext {workload.context}: raise kvCacheGiB or lower maxContext",
            code="InvalidLayout",
        )
