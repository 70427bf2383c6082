"""Expert parallelism on vLLM's CPU backend: honour `expert_map` in the unquantized fused MoE.

With `enable_expert_parallel`, each rank holds `global_experts / ep_size` experts and the MoE
layer passes `expert_map` (global id -> local id, or -1 when another rank owns the expert).
`CPUUnquantizedExperts.apply` ignores it and hands global ids to a kernel that only has the
local experts' weights, which reads out of bounds (TP2 + EP segfaults). The smallest correct
fix: translate the router's top-k ids to local ids and give non-local slots weight 0. Each
rank then adds only its own experts' contributions, and the all-reduce the layer already
performs across the TP/EP group sums them (GLM's shared expert stays tensor-sharded and goes
through that same single all-reduce, so nothing is counted twice).
Upstream fix: the same remapping at the top of
`vllm/model_executor/layers/fused_moe/experts/cpu_moe.py::CPUUnquantizedExperts.apply`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch


def localize_topk(
    topk_ids: torch.Tensor, topk_weights: torch.Tensor, expert_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing in global expert ids -> the same routing over this rank's experts.

    topk_ids: [tokens, k] global expert ids; topk_weights: [tokens, k];
    expert_map: [global_experts] local id of each expert on this rank, -1 if not local.
    Returns ([tokens, k] local ids, [tokens, k] weights): a slot whose expert lives on another
    rank points at local expert 0 with weight 0, so it contributes nothing here.
    """
    local = expert_map[topk_ids.long()]
    remote = local < 0
    ids = torch.where(remote, torch.zeros_like(local), local).to(topk_ids.dtype)
    return ids, topk_weights.masked_fill(remote, 0)


def honour_expert_map(apply: Callable[..., None]) -> Callable[..., None]:
    # vLLM calls `apply` with keyword arguments; bind them to find the routing tensors.
    signature = inspect.signature(apply)

    @functools.wraps(apply)
    def apply_with_expert_map(*args: Any, **kwargs: Any) -> None:
        call = signature.bind(*args, **kwargs)
        expert_map = call.arguments.get("expert_map")
        if expert_map is not None:
            ids, weights = localize_topk(call.arguments["topk_ids"], call.arguments["topk_weights"], expert_map)
            call.arguments.update(topk_ids=ids, topk_weights=weights, expert_map=None)
        apply(*call.args, **call.kwargs)

    return apply_with_expert_map


def apply() -> None:
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    CPUUnquantizedExperts.apply = honour_expert_map(CPUUnquantizedExperts.apply)  # type: ignore[method-assign]
