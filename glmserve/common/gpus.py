"""The GPUs glmserve plans for, as data (datasheet figures, see `docs/reference/glm-4.6.md`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GpuType = Literal["H100", "H200"]
# What one engine rank of a pool runs on: a GPU, or a share of a CPU node (vLLM's CPU backend).
DeviceType = Literal["H100", "H200", "CPU"]

# Datasheets and Zhipu's table count memory in decimal gigabytes, and the planner plans with those
# nominal figures (80 GB, 141 GB): the HBM a driver reports is somewhat larger, which is headroom.
GB = 10**9
TB = 10**12


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: DeviceType
    memory_bytes: int
    bandwidth_bytes_per_s: float
    bf16_flops: float = 0.0  # dense BF16 FLOP/s (0: no figure, CPU ranks)
    resource: str = "nvidia.com/gpu"  # the device plugin's extended resource

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / GB

    @property
    def bandwidth_tb_per_s(self) -> float:
        return self.bandwidth_bytes_per_s / TB


GPUS: dict[str, GpuSpec] = {
    gpu.name: gpu
    for gpu in (
        GpuSpec("H100", 80 * GB, 3.35 * TB, 989e12),
        GpuSpec("H200", 141 * GB, 4.8 * TB, 989e12),
    )
}


def cpu_device(memory_bytes: float) -> GpuSpec:
    """One engine rank's share of a CPU node's memory, planned like a GPU's HBM (no bandwidth figure)."""
    return GpuSpec("CPU", int(memory_bytes), 0.0, resource="cpu")


class UnknownGpuError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown GPU {self.name!r}; glmserve plans for: {', '.join(GPUS)}"


def get_gpu(name: str) -> GpuSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise UnknownGpuError(name) from None
