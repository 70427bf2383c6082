"""Data parallelism with expert parallelism on vLLM's CPU backend: the MoE layer's all-gather and
reduce-scatter of uneven parts.

With DP > 1 the MoE layer gathers every DP rank's tokens before the experts and scatters the
summed outputs back after them (`AgRsAll2AllManager`: `all_gatherv`, `reduce_scatterv` of the
group's device communicator, one part per rank, of `sizes[rank]` rows). `CpuCommunicator` does not
implement either (the base class raises NotImplementedError), so a DP + EP engine on CPU fails in
its first forward pass. Gloo has no uneven collectives either: the gather pads each part to the
largest, and the scatter all-reduces the whole tensor and keeps this rank's rows (a DP rank's
tokens are few; the extra bytes are the price of using only what Gloo has).
Upstream fix: the same two methods on
`vllm/distributed/device_communicators/cpu_communicator.py::CpuCommunicator`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_gatherv(group: Any, tensor: torch.Tensor, dim: int, sizes: list[int] | None) -> torch.Tensor:
    """Every rank's `tensor` (rank r's has sizes[r] rows along `dim`), concatenated in rank order."""
    world = dist.get_world_size(group)
    parts = torch.movedim(tensor, dim, 0).contiguous()
    counts = sizes or [parts.shape[0]] * world
    padded = parts.new_zeros((max(counts), *parts.shape[1:]))
    padded[: parts.shape[0]] = parts
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return torch.movedim(torch.cat([g[:n] for g, n in zip(gathered, counts, strict=True)]), 0, dim)


def reduce_scatterv(group: Any, tensor: torch.Tensor, dim: int, sizes: list[int] | None) -> torch.Tensor:
    """The sum over ranks of `tensor`, of which this rank keeps its sizes[rank] rows along `dim`.
    Half-precision parts are summed in float32 and rounded once (Gloo would round after each
    rank's addition)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    wide = torch.float32 if tensor.dtype in (torch.bfloat16, torch.float16) else tensor.dtype
    total = tensor.contiguous().to(wide, copy=True)
    dist.all_reduce(total, group=group)
    counts = sizes or [total.shape[dim] // world] * world
    return total.narrow(dim, sum(counts[:rank]), counts[rank]).to(tensor.dtype).contiguous()


def apply() -> None:
    from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator

    def gatherv(
        self: CpuCommunicator, input_: torch.Tensor | list[torch.Tensor], dim: int = 0, sizes: list[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(input_, list):
            return [all_gatherv(self.device_group, t, dim, sizes) for t in input_]
        return all_gatherv(self.device_group, input_, dim, sizes)

    def scatterv(
        self: CpuCommunicator, input_: torch.Tensor, dim: int = -1, sizes: list[int] | None = None
    ) -> torch.Tensor:
        return reduce_scatterv(self.device_group, input_, dim, sizes)

    CpuCommunicator.all_gatherv = gatherv  # type: ignore[method-assign,assignment]
    CpuCommunicator.reduce_scatterv = scatterv  # type: ignore[method-assign,assignment]
