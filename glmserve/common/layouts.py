"""Which replica layouts a model admits on nodes of a given size.

A replica either fits in one node (tensor parallelism over a power-of-two share of its NVLink
domain, experts tensor-sharded, vLLM's default) or spans whole nodes: tensor parallelism inside each
node, data-parallel attention across nodes and expert parallelism over every rank (the layout vLLM
and SGLang use for wide MoE). Expert parallelism needs the rank count to divide the routed experts
(redundant experts, which lift that, are placement's business), which is why 24 GPUs is no GLM-4.6
layout and full-context BF16 on H100 jumps from 16 to 32 GPUs, as in Zhipu's table.
"""

from __future__ import annotations

from collections.abc import Iterator

from glmserve.common.capacity import Layout
from glmserve.common.catalogue import Architecture
from glmserve.common.errors import ConfigError


def tensor_sizes(arch: Architecture, gpus_per_node: int) -> list[int]:
    sizes = [2**i for i in range(gpus_per_node.bit_length()) if gpus_per_node % 2**i == 0]
    return [t for t in sizes if not layout_problems(arch, gpus_per_node, Layout(t))]


def candidate_layouts(arch: Architecture, gpus_per_node: int) -> Iterator[Layout]:
    """Valid layouts, fewest GPUs first: node fractions, then whole nodes up to one expert per rank."""
    yield from (Layout(t) for t in tensor_sizes(arch, gpus_per_node))
    for nodes in range(2, arch.num_routed_experts // gpus_per_node + 1):
        layout = Layout(gpus_per_node, nodes, gpus_per_node * nodes)
        if not layout_problems(arch, gpus_per_node, layout):
            yield layout


def layout_problems(arch: Architecture, gpus_per_node: int, layout: Layout) -> list[str]:
    """Why `layout` cannot serve `arch` on nodes of `gpus_per_node` GPUs (empty when it can)."""
    t, d, e = layout.tensor, layout.data, layout.expert
    problems = []
    if min(t, d, e) < 1:
        problems.append("tensor, data and expert sizes must be at least 1")
        return problems
    if t > gpus_per_node:
        problems.append(f"tensor {t} exceeds the {gpus_per_node} GPUs of one node (tensor parallelism needs NVLink)")
    if arch.num_attention_heads % t:
        problems.append(f"tensor {t} does not divide the {arch.num_attention_heads} attention heads")
    if arch.num_kv_heads % t and t % arch.num_kv_heads:
        problems.append(f"tensor {t} and the {arch.num_kv_heads} KV heads must divide one another")
    if e not in (1, layout.gpus):
        problems.append(f"expert must be 1 or tensor x data = {layout.gpus}, got {e}")
    elif e > 1 and arch.num_routed_experts % e:
        problems.append(f"expert {e} does not divide the {arch.num_routed_experts} routed experts")
    elif e == 1 and arch.moe_intermediate_size % layout.gpus:
        problems.append(
            f"{layout.gpus} ranks do not divide the expert width {arch.moe_intermediate_size}; use expert parallelism"
        )
    if layout.gpus > gpus_per_node and (t != gpus_per_node or e != layout.gpus):
        problems.append(
            f"a replica over several nodes needs tensor = {gpus_per_node} (one node) and expert = tensor x data"
        )
    if layout.gpus < gpus_per_node and gpus_per_node % layout.gpus:
        problems.append(f"{layout.gpus} GPUs do not divide a node of {gpus_per_node}")
    return problems


def check_layout(arch: Architecture, gpus_per_node: int, layout: Layout) -> None:
    problems = layout_problems(arch, gpus_per_node, layout)
    if problems:
        raise ConfigError(f"layout {layout.describe()} is not valid: {'; '.join(problems)}")
