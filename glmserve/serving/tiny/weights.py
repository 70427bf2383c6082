"""Seeded random weights in the on-disk layout of zai-org/GLM-4.6's safetensors.

Names and shapes follow the published checkpoint (per-expert projections, router
`gate.weight` + `gate.e_score_correction_bias`, the MTP block under
`model.layers.{num_layers}.*`), so loaders written for the real model load this one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from glmserve.common.catalogue import Architecture

INIT_STD = 0.02


def _attention_shapes(arch: Architecture, prefix: str) -> Iterator[tuple[str, tuple[int, ...]]]:
    q = arch.num_attention_heads * arch.head_dim
    kv = arch.num_kv_heads * arch.head_dim
    h = arch.hidden_size
    yield f"{prefix}.input_layernorm.weight", (h,)
    yield f"{prefix}.post_attention_layernorm.weight", (h,)
    for name, out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
        yield f"{prefix}.self_attn.{name}.weight", (out, h)
        if arch.attention_bias:
            yield f"{prefix}.self_attn.{name}.bias", (out,)
    yield f"{prefix}.self_attn.o_proj.weight", (h, q)
    if arch.use_qk_norm:
        yield f"{prefix}.self_attn.q_norm.weight", (arch.head_dim,)
        yield f"{prefix}.self_attn.k_norm.weight", (arch.head_dim,)


def _mlp_shapes(prefix: str, hidden: int, inner: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield f"{prefix}.gate_proj.weight", (inner, hidden)
    yield f"{prefix}.up_proj.weight", (inner, hidden)
    yield f"{prefix}.down_proj.weight", (hidden, inner)


def _moe_shapes(arch: Architecture, prefix: str) -> Iterator[tuple[str, tuple[int, ...]]]:
    h = arch.hidden_size
    yield f"{prefix}.mlp.gate.weight", (arch.num_routed_experts, h)
    yield f"{prefix}.mlp.gate.e_score_correction_bias", (arch.num_routed_experts,)
    for e in range(arch.num_routed_experts):
        yield from _mlp_shapes(f"{prefix}.mlp.experts.{e}", h, arch.moe_intermediate_size)
    shared = arch.num_shared_experts * arch.moe_intermediate_size
    yield from _mlp_shapes(f"{prefix}.mlp.shared_experts", h, shared)


def parameter_shapes(arch: Architecture) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of the checkpoint with its shape, in file order."""
    h, v = arch.hidden_size, arch.vocab_size
    yield "model.embed_tokens.weight", (v, h)
    for i in range(arch.num_layers):
        prefix = f"model.layers.{i}"
        yield from _attention_shapes(arch, prefix)
        if i < arch.first_k_dense:
            yield from _mlp_shapes(f"{prefix}.mlp", h, arch.intermediate_size)
        else:
            yield from _moe_shapes(arch, prefix)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)
    for m in range(arch.num_mtp_layers):
        prefix = f"model.layers.{arch.num_layers + m}"
        yield from _attention_shapes(arch, prefix)
        yield from _moe_shapes(arch, prefix)
        yield f"{prefix}.enorm.weight", (h,)
        yield f"{prefix}.hnorm.weight", (h,)
        yield f"{prefix}.eh_proj.weight", (h, 2 * h)
        # The MTP block reuses the main model's embedding and lm_head (vLLM's Glm4MoeMTP maps them).
        yield f"{prefix}.shared_head.norm.weight", (h,)


def _init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        # Around 1 (not exactly) so that a loader that skipped a norm changes the logits.
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("e_score_correction_bias"):
        # Large enough to change which experts win, as the real bias does.
        return 0.05 * torch.randn(shape, generator=gen)
    if name.endswith(".bias"):
        return 0.02 * torch.randn(shape, generator=gen)
    if name.endswith("embed_tokens.weight"):
        return torch.randn(shape, generator=gen)
    return INIT_STD * torch.randn(shape, generator=gen)


def random_weights(arch: Architecture, seed: int, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Deterministic for a (arch, seed, dtype): one generator drawn in file order.

    The router's correction bias stays float32, as in the published checkpoint.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, shape in parameter_shapes(arch):
        tensor = _init(name, shape, gen)
        keep_fp32 = name.endswith("e_score_correction_bias")
        yield name, tensor.to(torch.float32 if keep_fp32 else dtype).contiguous()
