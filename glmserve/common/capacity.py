"""Memory arithmetic of one model replica per GPU: weights + KV cache + activations + runtime.

The figures reproduce Zhipu's GPU table for GLM-4.5/4.6 (`docs/reference/glm-4.6.md`: batch <= 8,
MTP on; BF16 16xH100 / 8xH200, FP8 8xH100 / 4xH200, twice that at full 128K context) with vLLM's
memory model: a replica may use `GPU_MEMORY_UTILIZATION` of each GPU's HBM, and must fit its weight
shard, the KV cache of every sequence it holds at full context, the activation peak of one
chunked-prefill step and the runtime's own buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from glmserve.common.catalogue import BYTES_PER_PARAM, Architecture, ModelSpec, Precision
from glmserve.common.gpus import GB, GpuSpec

GPU_MEMORY_UTILIZATION = 0.90  # vLLM's default: the rest of HBM is left to other processes and fragmentation
RUNTIME_RESERVE_BYTES = 2 * 2**30  # CUDA context, NCCL buffers and CUDA graphs of one GPU worker
ACTIVATION_BYTES = 2  # activations stay BF16 even with FP8 weights
DEFAULT_CONCURRENCY = 8  # the batch of Zhipu's table
DEFAULT_BATCHED_TOKENS = 8192  # vLLM's chunked-prefill step on large GPUs


@dataclass(frozen=True, slots=True)
class Workload:
    """What one replica must hold: `concurrency` sequences of `context` tokens each."""

    model: ModelSpec
    context: int
    concurrency: int = DEFAULT_CONCURRENCY
    kv_precision: Precision = "bf16"
    mtp: bool = True  # MTP speculative decoding loads the MTP layer and caches its KV too
    max_batched_tokens: int = DEFAULT_BATCHED_TOKENS
    # A fixed KV cache per rank (vLLM's CPU backend allocates exactly this); None: `concurrency`
    # sequences at full `context`, what vLLM fits into a GPU's HBM.
    kv_cache_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Layout:
    """How a replica spreads over GPUs: `tensor` GPUs per attention group, `data` groups.

    `expert` is 1 when routed experts are tensor-sharded over all ranks, or `tensor * data` when
    each rank holds whole experts (expert parallelism); either way each GPU holds 1/gpus of them.
    """

    tensor: int
    data: int = 1
    expert: int = 1

    @property
    def gpus(self) -> int:
        return self.tensor * self.data

    def describe(self) -> str:
        return f"tensor {self.tensor} x data {self.data}, expert {self.expert}"


@dataclass(frozen=True, slots=True)
class MemoryPerGpu:
    """Bytes one GPU of the replica needs, by purpose, against what vLLM may use of it."""

    usable: float
    weights: float
    kv_cache: float
    activations: float
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.runtime

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    @property
    def headroom(self) -> float:
        """Negative when it does not fit: the shortfall per GPU."""
        return self.usable - self.total


def routed_expert_params(arch: Architecture, mtp: bool) -> int:
    layers = arch.num_moe_layers + (arch.num_mtp_layers if mtp else 0)
    return layers * arch.num_routed_experts * arch.expert_params()


def activation_values_per_token(arch: Architecture) -> int:
    """Values live at once per token in the widest layer: residual + norm, QKV, attention output,
    and the routed experts' gate/up/act intermediates. Counted unsharded, so an upper bound."""
    q = arch.num_attention_heads * arch.head_dim
    kv = arch.num_kv_heads * arch.head_dim
    moe = arch.num_experts_per_token * 3 * arch.moe_intermediate_size
    return 2 * arch.hidden_size + (q + 2 * kv) + q + moe


def kv_replication(arch: Architecture, layout: Layout) -> int:
    """With more tensor ranks than KV heads, each KV head is cached on several ranks."""
    return max(1, layout.tensor // arch.num_kv_heads)


def sequences_per_rank(workload: Workload, layout: Layout) -> int:
    """Data-parallel attention ranks each hold their own sequences."""
    return math.ceil(workload.concurrency / layout.data)


def kv_bytes_per_token(workload: Workload) -> float:
    arch = workload.model.arch
    cached_layers = arch.num_layers + (arch.num_mtp_layers if workload.mtp else 0)
    return workload.model.kv_bytes_per_token(workload.kv_precision) * cached_layers / arch.num_layers


def kv_tokens_held(workload: Workload) -> int:
    """Tokens a fixed KV cache holds on one unsharded rank (a lower bound for tensor > 1)."""
    if workload.kv_cache_bytes is None:
        raise ValueError("the workload sizes its KV cache from its sequences")
    return int(workload.kv_cache_bytes // kv_bytes_per_token(workload))


def memory_per_gpu(workload: Workload, gpu: GpuSpec, layout: Layout) -> MemoryPerGpu:
    arch = workload.model.arch
    bytes_per_param = BYTES_PER_PARAM[workload.model.precision]
    experts = routed_expert_params(arch, workload.mtp)
    rest = arch.total_params(include_mtp=workload.mtp) - experts
    kv_tokens = sequences_per_rank(workload, layout) * workload.context
    return MemoryPerGpu(
        usable=gpu.memory_bytes * GPU_MEMORY_UTILIZATION,
        weights=(rest / layout.tensor + experts / layout.gpus) * bytes_per_param,
        kv_cache=kv_tokens * kv_bytes_per_token(workload) * kv_replication(arch, layout) / layout.tensor
        if workload.kv_cache_bytes is None
        else workload.kv_cache_bytes,
        activations=workload.max_batched_tokens * activation_values_per_token(arch) * ACTIVATION_BYTES,
        runtime=RUNTIME_RESERVE_BYTES,
    )


def pool_nodes(replicas: int, gpus_per_replica: int, gpus_per_node: int) -> int:
    """Nodes a pool of `replicas` needs: replicas smaller than a node share nodes."""
    return math.ceil(replicas * gpus_per_replica / gpus_per_node)


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """One layout of one replica on one GPU type, with its per-GPU memory."""

    workload: Workload
    gpu: GpuSpec
    gpus_per_node: int
    layout: Layout
    memory: MemoryPerGpu

    @property
    def gpus(self) -> int:
        return self.layout.gpus

    @property
    def nodes(self) -> int:
        return math.ceil(self.layout.gpus / self.gpus_per_node)

    def explain(self) -> str:
        w, arch, mem, lay = self.workload, self.workload.model.arch, self.memory, self.layout
        experts = routed_expert_params(arch, w.mtp)
        rest = arch.total_params(include_mtp=w.mtp) - experts
        bpp = BYTES_PER_PARAM[w.model.precision]
        layers = arch.num_layers + (arch.num_mtp_layers if w.mtp else 0)
        repl = kv_replication(arch, lay)
        lines = [
            f"{lay.describe()} = {lay.gpus} {self.gpu.name} ({self.nodes} node(s) of {self.gpus_per_node}):",
            f"  weights      ({rest / 1e9:.2f}B non-expert / tensor {lay.tensor}"
            f" + {experts / 1e9:.2f}B routed-expert / {lay.gpus} GPUs) x {bpp:g} B = {mem.weights / GB:6.2f} GB",
            f"  KV cache     {sequences_per_rank(w, lay)} seq x {w.context} tokens x"
            f" {w.model.kv_bytes_per_token(w.kv_precision):.0f} B x {layers}/{arch.num_layers} layers"
            + (f" x {repl} (KV heads replicated)" if repl > 1 else "")
            + f" / tensor {lay.tensor} = {mem.kv_cache / GB:6.2f} GB",
            f"  activations  {w.max_batched_tokens} tokens x {activation_values_per_token(arch)} values"
            f" x {ACTIVATION_BYTES} B = {mem.activations / GB:6.2f} GB",
            f"  runtime      CUDA context, NCCL, CUDA graphs = {mem.runtime / GB:6.2f} GB",
        ]
        verdict = "fits" if mem.fits else "does NOT fit"
        lines.append(
            f"  total {mem.total / GB:.2f} GB of {mem.usable / GB:.2f} GB usable"
            f" ({self.gpu.memory_gb:g} GB x {GPU_MEMORY_UTILIZATION:g}): {verdict},"
            f" {'headroom' if mem.fits else 'short by'} {abs(mem.headroom) / GB:.2f} GB per GPU"
        )
        return "\n".join(lines)


def fit(workload: Workload, gpu: GpuSpec, gpus_per_node: int, layout: Layout) -> ReplicaPlan:
    return ReplicaPlan(workload, gpu, gpus_per_node, layout, memory_per_gpu(workload, gpu, layout))
