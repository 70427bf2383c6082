"""GLM-4.6 family as data: architectures, precisions and serving defaults.

Numbers come from the model card and `config.json` of zai-org/GLM-4.6 (see
`docs/reference/glm-4.6.md`). `glm-4.6-tiny` keeps every architectural feature
(GQA, partial RoPE, QK-norm, attention bias, dense-then-MoE layers, sigmoid router
with a correction bias, shared expert, an MTP layer) at toy size, so the code paths
that serve the real model are the ones exercised on a laptop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Precision = Literal["bf16", "fp8"]

BYTES_PER_PARAM: dict[str, float] = {"bf16": 2.0, "fp8": 1.0}

# GLM-4.6's own special tokens, in the order of its tokenizer (ids 151329..).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|begin_of_transcription|>",
    "<|end_of_transcription|>",
    "<|code_prefix|>",
    "<|code_middle|>",
    "<|code_suffix|>",
    "/nothink",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "<|image|>",
    "<|video|>",
)
# Generation stops at end of text, or when the model hands the turn back to the user or a tool.
STOP_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|user|>", "<|observation|>")
PAD_TOKEN = "<|endoftext|>"


@dataclass(frozen=True, slots=True)
class Architecture:
    """The `Glm4MoeForCausalLM` hyper-parameters that decide shapes and memory."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    moe_intermediate_size: int
    num_routed_experts: int
    num_experts_per_token: int
    num_shared_experts: int
    first_k_dense: int
    vocab_size: int
    max_position_embeddings: int
    routed_scaling_factor: float = 2.5
    partial_rotary_factor: float = 0.5
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-5
    n_group: int = 1
    topk_group: int = 1
    use_qk_norm: bool = True
    attention_bias: bool = True
    num_mtp_layers: int = 1

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense

    def attention_params(self) -> int:
        q = self.num_attention_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        proj = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        bias = (q + 2 * kv) if self.attention_bias else 0
        qk_norm = 2 * self.head_dim if self.use_qk_norm else 0
        return proj + bias + qk_norm + 2 * self.hidden_size  # + the two layer norms

    def expert_params(self) -> int:
        """One routed expert (gate, up and down projections)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def moe_layer_params(self) -> int:
        experts = (self.num_routed_experts + self.num_shared_experts) * self.expert_params()
        router = self.num_routed_experts * (self.hidden_size + 1)
        return self.attention_params() + experts + router

    def dense_layer_params(self) -> int:
        return self.attention_params() + 3 * self.hidden_size * self.intermediate_size

    def mtp_layer_params(self) -> int:
        """The MTP block: a MoE decoder layer plus its input projection and norms.

        It shares the embedding and output head with the main model in vLLM.
        """
        return self.moe_layer_params() + 2 * self.hidden_size * self.hidden_size + 3 * self.hidden_size

    def total_params(self, include_mtp: bool = True) -> int:
        embed_and_head = 2 * self.vocab_size * self.hidden_size + self.hidden_size
        layers = self.first_k_dense * self.dense_layer_params() + self.num_moe_layers * self.moe_layer_params()
        mtp = self.num_mtp_layers * self.mtp_layer_params() if include_mtp else 0
        return embed_and_head + layers + mtp

    def active_params(self) -> int:
        """Parameters touched by one token (top-k routed + shared experts, no MTP)."""
        inactive = self.num_routed_experts - self.num_experts_per_token
        return self.total_params(include_mtp=False) - self.num_moe_layers * inactive * self.expert_params()

    def kv_values_per_token(self) -> int:
        """K and V values cached per token over all layers: 2 x layers x kv_heads x head_dim."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def hf_config(self) -> dict[str, Any]:
        """`config.json` of a Hugging Face `Glm4MoeForCausalLM` checkpoint."""
        return {
            "architectures": ["Glm4MoeForCausalLM"],
            "model_type": "glm4_moe",
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "moe_intermediate_size": self.moe_intermediate_size,
            "n_group": self.n_group,
            "n_routed_experts": self.num_routed_experts,
            "n_shared_experts": self.num_shared_experts,
            "norm_topk_prob": True,
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_token,
            "first_k_dense_replace": self.first_k_dense,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_kv_heads,
            "num_nextn_predict_layers": self.num_mtp_layers,
            "partial_rotary_factor": self.partial_rotary_factor,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": self.rope_theta,
            "routed_scaling_factor": self.routed_scaling_factor,
            "tie_word_embeddings": False,
            "topk_group": self.topk_group,
            "use_cache": True,
            "use_qk_norm": self.use_qk_norm,
            "vocab_size": self.vocab_size,
        }


GLM_4_6_ARCH = Architecture(
    num_layers=92,
    hidden_size=5120,
    num_attention_heads=96,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=12288,
    moe_intermediate_size=1536,
    num_routed_experts=160,
    num_experts_per_token=8,
    num_shared_experts=1,
    first_k_dense=3,
    vocab_size=151552,
    max_position_embeddings=202752,
)

# Toy size, same shape rules: GQA 4:1, head_dim a CPU-attention size, an even expert count
# so that expert parallelism over 2 ranks splits them, top-k > 1 so routing matters.
GLM_4_6_TINY_ARCH = Architecture(
    num_layers=4,
    hidden_size=256,
    num_attention_heads=8,
    num_kv_heads=2,
    head_dim=64,
    intermediate_size=512,
    moe_intermediate_size=128,
    num_routed_experts=16,
    num_experts_per_token=4,
    num_shared_experts=1,
    first_k_dense=1,
    vocab_size=4096,
    max_position_embeddings=8192,
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A servable model: architecture, weight precision and serving defaults."""

    name: str
    arch: Architecture
    precision: Precision
    source: str
    thinking_default: bool
    description: str
    served_context: int = 0  # 0: the architecture's max_position_embeddings
    tags: tuple[str, ...] = field(default=())

    @property
    def max_context(self) -> int:
        return self.served_context or self.arch.max_position_embeddings

    def weight_bytes(self) -> float:
        return self.arch.total_params() * BYTES_PER_PARAM[self.precision]

    def kv_bytes_per_token(self, kv_precision: Precision = "bf16") -> float:
        return self.arch.kv_values_per_token() * BYTES_PER_PARAM[kv_precision]

    def with_context(self, max_context: int) -> ModelSpec:
        return replace(self, served_context=max_context)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "source": self.source,
            "thinking_default": self.thinking_default,
            "max_context": self.max_context,
            "total_params": self.arch.total_params(),
            "active_params": self.arch.active_params(),
            "architecture": asdict(self.arch),
        }


TINY_MODEL = "glm-4.6-tiny"

CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="glm-4.6",
            arch=GLM_4_6_ARCH,
            precision="bf16",
            source="hf://zai-org/GLM-4.6",
            thinking_default=True,  # Z.ai's API default
            description="GLM-4.6, 355B total / 32B active MoE, BF16 weights",
        ),
        ModelSpec(
            name="glm-4.6-fp8",
            arch=GLM_4_6_ARCH,
            precision="fp8",
            source="hf://zai-org/GLM-4.6-FP8",
            thinking_default=True,
            description="GLM-4.6 with FP8 (compressed-tensors) weights",
        ),
        ModelSpec(
            name=TINY_MODEL,
            arch=GLM_4_6_TINY_ARCH,
            precision="bf16",
            source="builtin://glm-4.6-tiny",
            # Random weights never emit </think>: with thinking on, every token would land in
            # reasoning_content and no answer or tool call would ever start.
            thinking_default=False,
            description="GLM-4.6 architecture at toy size with seeded random weights (built locally)",
        ),
    )
}


class UnknownModelError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown model {self.name!r}; the catalogue has: {', '.join(sorted(CATALOGUE))}"


def get_model(name: str) -> ModelSpec:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownModelError(name) from None
