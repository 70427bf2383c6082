"""vLLM engine arguments for one engine replica, from the model and the serve config.

Pure functions: the unit tests pin what every deployment shape passes to vLLM.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Literal

from glmserve.common.config import PoolConfig, ServeConfig
from glmserve.common.roles import Role
from glmserve.serving.models import ResolvedModel

Device = Literal["cpu", "gpu"]

GIB = 2**30


def pool_of(cfg: ServeConfig, role: Role) -> PoolConfig:
    return {"prefill": cfg.prefill, "decode": cfg.decode}.get(role) or PoolConfig(
        replicas=cfg.replicas, max_replicas=cfg.max_replicas, downscale_delay_s=cfg.downscale_delay_s
    )


def kv_transfer_config(cfg: ServeConfig, role: Role) -> dict[str, Any] | None:
    """vLLM's KV connector settings: prefill produces KV, decode consumes it."""
    if role == "colocated":
        return None
    config = kv_roles(cfg.kv_connector, role)
    if cfg.kv_connector == "ExampleConnector":
        # ExampleConnector moves KV through files; both pools must see the same directory.
        config["kv_connector_extra_config"] = {"shared_storage_path": str(kv_exchange_dir())}
    return config


def kv_roles(connector: str, role: Role) -> dict[str, Any]:
    """The connector and the pool's side of it. A decode engine whose KV pull fails (its prefill
    engine died, or freed the blocks) recomputes the prompt instead of failing the request."""
    if role == "prefill":
        return {"kv_connector": connector, "kv_role": "kv_producer"}
    return {"kv_connector": connector, "kv_role": "kv_consumer", "kv_load_failure_policy": "recompute"}


def kv_pull_drain(role: Role, drain_timeout_s: float) -> dict[str, Any]:
    """A prefill engine answers before its KV is moved: it holds the prompt's blocks until the decode
    engine has pulled them (NIXL: a lease the decode side renews while the request waits there).
    Serve counts the call done at the answer, so a prefill replica being removed would stop with
    pulls pending. vLLM's graceful shutdown (`shutdown_timeout` > 0) keeps the engine stepping until
    no request holds blocks for a transfer; EngineServer.__del__ runs it, within the replica's drain."""
    return {"shutdown_timeout": math.ceil(drain_timeout_s)} if role == "prefill" else {}


def kv_exchange_dir() -> Path:
    return Path(tempfile.gettempdir()) / "glmserve-kv"


def glm_serving_kwargs(*, max_model_len: int, thinking_default: bool, max_seqs: int, max_queued: int) -> dict[str, Any]:
    """What every GLM-4.6 engine runs with, on any hardware."""
    return {
        "max_model_len": max_model_len,
        # GLM-4.6's tool-call and reasoning formats, parsed by vLLM's own glm45 parsers.
        "tool_call_parser": "glm45",
        "reasoning_parser": "glm45",
        "enable_auto_tool_choice": True,
        # Every tool call is constrained to its schema (as if each tool were "strict"), and JSON
        # values carry no free whitespace: otherwise a weak model can stall in whitespace the
        # grammar allows until max_tokens, or emit a call missing required arguments.
        "tool_strict_level": "parameter",
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "default_chat_template_kwargs": {"enable_thinking": thinking_default},
        "enable_prompt_tokens_details": True,
        "enable_prefix_caching": True,
        # The block hash glmserve's router can reproduce from token ids (with PYTHONHASHSEED pinned).
        "prefix_caching_hash_algo": "sha256_cbor",
        "max_num_seqs": max_seqs,
        # Waiting requests run in plan-priority order (the ingress sets each request's priority).
        "scheduling_policy": "priority",
        # vLLM's own admission control: past this many unfinished requests it answers 503.
        "max_num_queued_reqs": max_seqs + max_queued,
    }


def engine_kwargs(model: ResolvedModel, cfg: ServeConfig, device: Device, role: Role = "colocated") -> dict[str, Any]:
    """Keyword arguments for vLLM's `AsyncEngineArgs` + `FrontendArgs` (Ray Serve LLM splits them)."""
    pool = pool_of(cfg, role)
    kwargs = glm_serving_kwargs(
        max_model_len=cfg.max_model_len or model.max_context,
        thinking_default=model.thinking_default,
        max_seqs=cfg.max_ongoing_requests,
        max_queued=cfg.max_queued_requests,
    ) | {
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "tensor_parallel_size": pool.tensor_parallel_size,
        "enable_expert_parallel": pool.expert_parallel,
    }
    if transfer := kv_transfer_config(cfg, role):
        kwargs["kv_transfer_config"] = transfer
        kwargs |= kv_pull_drain(role, cfg.drain_timeout_s)
    if device == "cpu":
        kwargs |= cpu_engine_kwargs(cfg.kv_cache_gib)
    return kwargs


def cpu_engine_kwargs(kv_cache_gib: float) -> dict[str, Any]:
    """What an engine on vLLM's CPU backend runs with, besides the GLM serving arguments."""
    return {
        # CUDA-graph capture and torch.compile buy nothing on CPU and cost ~40 s of start-up.
        "enforce_eager": True,
        "kv_cache_memory_bytes": int(kv_cache_gib * GIB),
    }
