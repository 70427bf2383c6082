"""`glmserve up`'s Serve application: engine pools on this machine (or a joined Ray cluster)
behind the OpenAI ingress, described from a ServeConfig for the topology builder that the
RayService uses too."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from glmserve.common.autoscaling import DEFAULT_KV_CACHE_USAGE, PoolTargets
from glmserve.common.config import ServeConfig
from glmserve.common.placement import local_pool_placement
from glmserve.common.ports import free_ports
from glmserve.common.roles import Role
from glmserve.router.client import ROUTE_TIMEOUT_MARGIN_S
from glmserve.serving.engine.args import Device, engine_kwargs, pool_of
from glmserve.serving.engine.cpus import PoolRanks, assign_cores
from glmserve.serving.ingress.discovery import ScrapeTarget
from glmserve.serving.ingress.limits import MIB, RequestLimits
from glmserve.serving.ingress.settings import LimitsSettings, MigrationSettings
from glmserve.serving.models import ResolvedModel
from glmserve.serving.placement import check_fits
from glmserve.serving.topology import CPU, PoolSpec, TopologySpec

APP_NAME = "glmserve"
NODE_ID_LABEL = "ray.io/node-id"  # a label every Ray node carries


def cpu_binds(cfg: ServeConfig, device: Device, roles: list[Role]) -> dict[Role, list[str]]:
    """Per-replica core bindings: the user's, or disjoint cores when engines share this machine."""
    auto: dict[str, list[str]] = {}
    if device == "cpu" and cfg.ray_address is None:
        ranks = [PoolRanks(r, pool_of(cfg, r).start_replicas, pool_of(cfg, r).tensor_parallel_size) for r in roles]
        auto = assign_cores(ranks, os.cpu_count() or 1)
    return {r: [cpus] if (cpus := pool_of(cfg, r).cpus) else auto.get(r, []) for r in roles}


def roles_of(cfg: ServeConfig) -> list[Role]:
    return ["prefill", "decode"] if cfg.disaggregated else ["colocated"]


def check_placement(cfg: ServeConfig, device: Device) -> None:
    """Fail before deploying when the Ray cluster cannot hold every engine replica."""
    check_fits(
        [
            (local_pool_placement(role, pool_of(cfg, role).tensor_parallel_size, "CPU" if device == "cpu" else "GPU"),
             pool_of(cfg, role).start_replicas)
            for role in roles_of(cfg)
        ]
    )  # fmt: skip


def pool_targets(cfg: ServeConfig, role: Role) -> PoolTargets | None:
    """glmserve's scaling policy for an autoscaled pool, where chosen: an engine's sequences are its
    --max-ongoing-requests; no prefill rate is known for a local device, so prefill scales on its
    sequences too. The pool's downscale delay replaces the policy's default where set."""
    pool = pool_of(cfg, role)
    if cfg.autoscaling_policy != "glmserve" or not pool.autoscaling or pool.max_replicas is None:
        return None
    return PoolTargets(
        role=role,
        min_replicas=pool.replicas,
        max_replicas=pool.max_replicas,
        ttft_slo_s=cfg.ttft_slo_s,
        itl_slo_s=cfg.itl_slo_s,
        prefill_tokens_per_s=None,
        running_per_replica=cfg.max_ongoing_requests,
        kv_cache_usage=DEFAULT_KV_CACHE_USAGE,
        **({} if pool.downscale_delay_s is None else {"downscale_delay_s": pool.downscale_delay_s}),
    )


def pool_spec(model: ResolvedModel, cfg: ServeConfig, device: Device, role: Role, binds: Sequence[str]) -> PoolSpec:
    pool = pool_of(cfg, role)
    return PoolSpec(
        role=role,
        replicas=pool.replicas,
        max_replicas=pool.max_replicas or pool.replicas,
        max_running=cfg.max_ongoing_requests,
        max_waiting=cfg.max_queued_requests,
        engine_kwargs=engine_kwargs(model, cfg, device, role),
        accelerator=CPU if device == "cpu" else None,
        target_ongoing_requests=pool.target_ongoing_requests,
        scaling=pool_targets(cfg, role),
        initial_replicas=pool.initial_replicas,
        downscale_delay_s=pool.downscale_delay_s,
        drain_timeout_s=cfg.drain_timeout_s,
        cpu_binds=tuple(binds),
    )


def topology_spec(
    model: ResolvedModel,
    cfg: ServeConfig,
    device: Device,
    router: str | None = None,
    scrape_targets: Sequence[ScrapeTarget] = (),
    *,
    avoid_node: str | None = None,
) -> TopologySpec:
    """`router`: gRPC target of glmserve's router, if one runs; `scrape_targets`: the stack's
    metrics endpoints, which the ingress lists at /metrics/sd; `avoid_node`: a Ray node id
    (a joined cluster's head) where no replica may run."""
    roles = roles_of(cfg)
    binds = cpu_binds(cfg, device, roles)
    ingress_options: dict[str, object] = {"num_cpus": 0}
    if avoid_node is not None:
        # A joined cluster's head (KubeRay's runs with num-cpus 0) schedules nothing of ours; the
        # engines stay off it by their CPU bundles, the 0-CPU ingress only by this selector.
        ingress_options["label_selector"] = {NODE_ID_LABEL: f"!{avoid_node}"}
    pools = tuple(pool_spec(model, cfg, device, role, binds[role]) for role in roles)
    return TopologySpec(
        model=model.name,
        source=str(model.path),
        max_context=cfg.max_model_len or model.max_context,
        thinking_default=model.thinking_default,
        created=int(time.time()),
        pools=pools,
        stream_interval_ms=cfg.stream_interval_ms,
        router=router,
        route_timeout_s=cfg.queue_ttl_s + ROUTE_TIMEOUT_MARGIN_S,
        serve_router=cfg.serve_router,
        events_ports={p.role: free_ports(2 * p.max_replicas) for p in pools} if router else {},
        ingress_actor_options=ingress_options,
        limits=LimitsSettings(
            tenants_file=str(cfg.tenants_file) if cfg.tenants_file else None,
            redis_url=cfg.redis_url,
            outage=cfg.limits_outage,
        ),
        retry_after_s=cfg.retry_after_s,
        migration=MigrationSettings(cfg.migration_limit, cfg.stall_timeout_s),
        scrape_targets=tuple(scrape_targets),
        metrics_tenants=cfg.metrics_tenants,
        request_limits=RequestLimits(max_body_bytes=cfg.max_body_mib * MIB),
    )
