"""The Ray Serve application: engine pools behind the OpenAI ingress."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from glmserve.common.config import ServeConfig
from glmserve.common.placement import local_pool_placement
from glmserve.serving.engine.args import Device, Role, engine_kwargs, pool_of
from glmserve.serving.engine.cpus import PoolRanks, assign_cores
from glmserve.serving.engine.registration import RouterLink
from glmserve.serving.engine.server import EngineServer
from glmserve.serving.ingress.app import Ingress
from glmserve.serving.ingress.discovery import ScrapeTarget
from glmserve.serving.ingress.settings import IngressSettings, LimitsSettings, ServedModel
from glmserve.serving.models import ResolvedModel
from glmserve.serving.placement import check_fits

APP_NAME = "glmserve"
# NIXL's side channel listens on base + replica rank; pools on one node need disjoint ranges.
NIXL_PORT_BASE = {"colocated": 20000, "prefill": 20000, "decode": 21000}
DEPLOYMENT_PREFIX = {"colocated": "Engine:", "prefill": "Prefill:", "decode": "Decode:"}


PINNED_ROUTER = "glmserve.serving.routing.pinned:PinnedRouter"
PREFIX_AFFINITY_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
NODE_ID_LABEL = "ray.io/node-id"  # a label every Ray node carries
# Ray Serve LLM's switch to vLLM's CPU backend (and to CPU placement bundles).
CPU_ACCELERATOR = {"kind": "cpu"}


def experimental_configs(role: Role, stream_interval_ms: int) -> dict[str, Any]:
    """Ray Serve LLM's knobs: the pool's NIXL ports, and the interval EngineServer batches tokens on."""
    return {"NIXL_SIDE_CHANNEL_PORT_BASE": NIXL_PORT_BASE[role], "stream_batching_interval_ms": stream_interval_ms}


def llm_config(
    model: ResolvedModel, cfg: ServeConfig, device: Device, role: Role = "colocated", *, routed: bool = False
) -> LLMConfig:
    pool = pool_of(cfg, role)
    deployment: dict[str, Any] = {
        # The replica actor only relays; vLLM's engine processes hold the CPUs/GPUs (placement bundles).
        "ray_actor_options": {"num_cpus": 0},
        # Above vLLM's own admission limit, so vLLM (not Ray) decides when a replica is full.
        "max_ongoing_requests": 2 * (cfg.max_ongoing_requests + cfg.max_queued_requests),
    }
    if pool.autoscaling:
        deployment["autoscaling_config"] = {
            "min_replicas": pool.replicas,
            "initial_replicas": pool.replicas,
            "max_replicas": pool.max_replicas,
            "target_ongoing_requests": pool.target_ongoing_requests,
        }
    else:
        deployment["num_replicas"] = pool.replicas
    if routed:
        # Calls go to the replica glmserve's router chose for them.
        deployment["request_router_config"] = {"request_router_class": PINNED_ROUTER}
    elif cfg.serve_router == "prefix-affinity":
        # As Ray Serve LLM's docs configure it, with the router's own defaults.
        deployment["request_router_config"] = {"request_router_class": PREFIX_AFFINITY_ROUTER}
    extra: dict[str, Any] = {"accelerator_config": CPU_ACCELERATOR} if device == "cpu" else {}
    return LLMConfig(
        model_loading_config={"model_id": model.name, "model_source": str(model.path)},
        deployment_config=deployment,
        engine_kwargs=engine_kwargs(model, cfg, device, role),
        experimental_configs=experimental_configs(role, cfg.stream_interval_ms),
        log_engine_metrics=True,
        **extra,
    )


def cpu_binds(cfg: ServeConfig, device: Device, roles: list[Role]) -> dict[Role, list[str]]:
    """Per-replica core bindings: the user's, or disjoint cores when engines share this machine."""
    auto: dict[str, list[str]] = {}
    if device == "cpu" and cfg.ray_address is None:
        ranks = [PoolRanks(r, pool_of(cfg, r).replicas, pool_of(cfg, r).tensor_parallel_size) for r in roles]
        auto = assign_cores(ranks, os.cpu_count() or 1)
    return {r: [cpus] if (cpus := pool_of(cfg, r).cpus) else auto.get(r, []) for r in roles}


def roles_of(cfg: ServeConfig) -> list[Role]:
    return ["prefill", "decode"] if cfg.disaggregated else ["colocated"]


def check_placement(cfg: ServeConfig, device: Device) -> None:
    """Fail before deploying when the Ray cluster cannot hold every engine replica."""
    check_fits(
        [
            (local_pool_placement(role, pool_of(cfg, role).tensor_parallel_size, "CPU" if device == "cpu" else "GPU"),
             pool_of(cfg, role).replicas)
            for role in roles_of(cfg)
        ]
    )  # fmt: skip


def build_app(
    model: ResolvedModel,
    cfg: ServeConfig,
    device: Device,
    router: str | None = None,
    scrape_targets: Sequence[ScrapeTarget] = (),
    *,
    avoid_node: str | None = None,
) -> Application:
    """`router`: gRPC target of glmserve's router, if one runs; `scrape_targets`: the stack's
    metrics endpoints, which the ingress lists at /metrics/sd; `avoid_node`: a Ray node id
    (a joined cluster's head) where no replica may run."""
    roles = roles_of(cfg)
    binds = cpu_binds(cfg, device, roles)
    pools = {}
    for role in roles:
        pool = "decode" if role == "colocated" else role
        link = RouterLink((router,), pool, model.name) if router else None
        pools[pool] = build_llm_deployment(
            llm_config(model, cfg, device, role, routed=router is not None),
            deployment_cls=EngineServer,
            name_prefix=DEPLOYMENT_PREFIX[role],
            bind_kwargs={"cpu_binds": binds[role], "router": link},
        )
    decode: Role = "decode" if cfg.disaggregated else "colocated"
    served = ServedModel(
        model.name,
        cfg.max_model_len or model.max_context,
        model.thinking_default,
        int(time.time()),
        checkpoint=str(model.path),
        engine_kwargs=engine_kwargs(model, cfg, device, decode),
        capacity=pool_of(cfg, decode).replicas * cfg.max_ongoing_requests,
        max_waiting=pool_of(cfg, decode).replicas * cfg.max_queued_requests,
    )
    limits = LimitsSettings(
        tenants_file=str(cfg.tenants_file) if cfg.tenants_file else None,
        redis_url=cfg.redis_url,
        outage=cfg.limits_outage,
    )
    settings = IngressSettings(
        models=(served,),
        retry_after_s=cfg.retry_after_s,
        limits=limits,
        router_address=router,
        scrape_targets=tuple(scrape_targets),
        metrics_tenants=cfg.metrics_tenants,
    )
    ingress = Ingress
    if avoid_node is not None:
        # A joined cluster's head (KubeRay's runs with num-cpus 0) schedules nothing of ours; the
        # engines stay off it by their CPU bundles, the 0-CPU ingress only by this selector.
        options = {"num_cpus": 0, "label_selector": {NODE_ID_LABEL: f"!{avoid_node}"}}
        ingress = Ingress.options(ray_actor_options=options)  # type: ignore[attr-defined]
    # @serve.deployment turned the class into a Deployment, which mypy cannot see.
    return ingress.bind(engines={model.name: pools}, settings=settings)  # type: ignore[attr-defined]
