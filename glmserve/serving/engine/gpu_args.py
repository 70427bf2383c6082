"""vLLM engine arguments of a ModelDeployment's pool (GPU, or CPU node groups), from the planner's layout.

The capacity planner's memory model and these arguments must agree: the same layout (tensor,
data and expert sizes), the same memory fraction, the same batch and context, MTP on or off.
"""

from __future__ import annotations

from typing import Any

from glmserve.common.capacity import GPU_MEMORY_UTILIZATION
from glmserve.common.config import DRAIN_TIMEOUT_S
from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PoolLayoutStatus
from glmserve.common.placement import redundant_experts
from glmserve.common.roles import WorkerRole
from glmserve.serving.engine.args import cpu_engine_kwargs, glm_serving_kwargs, kv_pull_drain, kv_roles

# Requests one replica may hold waiting beyond those it runs, before vLLM answers 503.
QUEUE_PER_SEQUENCE = 2


def gpu_engine_kwargs(spec: ModelDeploymentSpec, role: WorkerRole, layout: PoolLayoutStatus) -> dict[str, Any]:
    model = spec.model.resolve()
    pool = spec.pools()[role]
    par = layout.parallelism
    kwargs = glm_serving_kwargs(
        max_model_len=model.max_context,
        thinking_default=model.thinking_default,
        max_seqs=pool.max_concurrency,
        max_queued=QUEUE_PER_SEQUENCE * pool.max_concurrency,
    ) | {
        "tensor_parallel_size": par.tensor,
        "data_parallel_size": par.data,
        "kv_transfer_config": kv_roles(spec.kv_transfer.connector, role),
    }
    kwargs |= kv_pull_drain(role, DRAIN_TIMEOUT_S)
    # A CPU rank's KV cache is the node group's fixed size; a GPU's is what HBM leaves.
    kwargs |= (
        cpu_engine_kwargs(layout.cpu.kv_cache_gib) if layout.cpu else {"gpu_memory_utilization": GPU_MEMORY_UTILIZATION}
    )
    if par.expert > 1:
        kwargs["enable_expert_parallel"] = True
    if par.expert > 1 and not layout.cpu:  # vLLM's EPLB runs on CUDA, ROCm and XPU only
        kwargs |= {
            # EPLB re-places hot experts at run time into redundant slots (DeepSeek's algorithm).
            "enable_eplb": True,
            "eplb_config": {"num_redundant_experts": redundant_experts(model.arch.num_routed_experts, par.expert)},
        }
    if spec.model.kv_cache_precision == "fp8":
        kwargs["kv_cache_dtype"] = "fp8"
    if spec.mtp.enabled:
        # GLM-4.6's MTP layer drafts tokens (vLLM loads it as Glm4MoeMTP from the same checkpoint).
        # Prefill runs it too: its KV cache (MTP layer included) is what decode receives.
        kwargs["speculative_config"] = {"method": "mtp", "num_speculative_tokens": spec.mtp.num_speculative_tokens}
    return kwargs
