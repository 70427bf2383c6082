"""The Serve application's shape: engine pools behind the OpenAI ingress, built from data.

`glmserve up` (serving/app.py, from a ServeConfig) and the RayService (serving/entrypoint.py, from
the operator's capacity plan) each describe their model, pools and ingress as a `TopologySpec`;
`plan()` turns one into every deployment's options (pure, no Ray), and `application()` binds them
(Ray Serve LLM asks the running Ray for its runtime environment while it builds a deployment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.deployment import LLMServer

from glmserve.common.autoscaling import PoolTargets
from glmserve.common.config import DRAIN_TIMEOUT_S
from glmserve.common.placement import RankGroup
from glmserve.common.roles import Role, WorkerRole, worker_role
from glmserve.router.client import DEFAULT_ROUTE_TIMEOUT_S
from glmserve.serving.autoscaling import POLICY
from glmserve.serving.engine.logs import RUNTIME_ENV
from glmserve.serving.engine.registration import RouterLink
from glmserve.serving.engine.server import EngineServer
from glmserve.serving.ingress.app import Ingress
from glmserve.serving.ingress.discovery import ScrapeTarget
from glmserve.serving.ingress.limits import RequestLimits
from glmserve.serving.ingress.settings import IngressSettings, LimitsSettings, MigrationSettings, ServedModel

# NIXL's side channel listens on base + replica rank; pools on one node need disjoint ranges.
NIXL_PORT_BASE: Mapping[Role, int] = {"colocated": 20000, "prefill": 20000, "decode": 21000}
DEPLOYMENT_PREFIX: Mapping[Role, str] = {"colocated": "Engine:", "prefill": "Prefill:", "decode": "Decode:"}
PINNED_ROUTER = "glmserve.serving.routing.pinned:PinnedRouter"
PREFIX_AFFINITY_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
# Serve's default router, named by the module that defines it. Serve pickles a router's module by
# value into the deployment's config, which each replica returns when a restarted controller
# recovers it: the default path names the whole package (109 KB), above the 100 KiB Ray returns
# inline, so the reply goes through the object store, which after a head loss cannot move it until
# the replica's raylet knows the new head, often past Serve's 30 s limit to recover a replica
# (docs/node-loss.md). Named by its own module it is 4.5 KB.
SERVE_ROUTER = "ray.serve._private.request_router.pow_2_router:PowerOfTwoChoicesRequestRouter"
DRAIN_CHECK_S = 1.0
CPU = "cpu"  # PoolSpec.accelerator of vLLM's CPU backend
# Ray Serve LLM's switch to vLLM's CPU backend (and to CPU placement bundles).
CPU_ACCELERATOR = {"kind": "cpu"}


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool of engine replicas, as either caller sizes it."""

    role: Role
    replicas: int  # at start (and the minimum when autoscaling)
    max_replicas: int  # == replicas: a fixed count
    max_running: int  # sequences one replica runs at once (vLLM's max_num_seqs)
    max_waiting: int  # requests one replica holds waiting beyond those, before vLLM answers 503
    engine_kwargs: Mapping[str, Any]
    accelerator: str | None  # CPU, a GPU type, or None: any GPU
    target_ongoing_requests: float | None = None  # autoscaling target per replica; None: Serve's default
    scaling: PoolTargets | None = None  # glmserve's policy (Serve's custom policy); None: Serve's default
    initial_replicas: int | None = None  # autoscaling: replicas at start; None: `replicas`
    downscale_delay_s: float | None = None  # autoscaling: None: Serve's default
    drain_timeout_s: float = DRAIN_TIMEOUT_S  # a removed replica's in-flight requests finish within it
    placement: RankGroup | None = None  # None: Ray Serve LLM's default bundles
    engine_cls: type[LLMServer] = EngineServer
    cpu_binds: tuple[str, ...] = ()  # per-replica core bindings; (): vLLM's own

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.replicas


@dataclass(frozen=True, slots=True)
class TopologySpec:
    model: str  # the served name
    source: str  # what Ray Serve LLM loads and where the ingress reads the tokenizer
    max_context: int
    thinking_default: bool
    created: int  # the model's `created` in /v1/models
    pools: tuple[PoolSpec, ...]  # colocated, or prefill and decode
    stream_interval_ms: int
    router: str | None = None  # gRPC target of glmserve's router; None: Serve balances alone
    route_timeout_s: float = DEFAULT_ROUTE_TIMEOUT_S  # the ingress's Route deadline: queue TTL + margin
    # How Serve balances when glmserve's router does not: its power-of-two choices, or Ray Serve
    # LLM's PrefixCacheAffinityRouter (a peer the routing benchmark compares against).
    serve_router: Literal["power-of-two", "prefix-affinity"] = "power-of-two"
    # First KV-event port of each pool's replicas (two per replica); absent: the role's fixed base.
    events_ports: Mapping[Role, int] = field(default_factory=dict)
    ingress_replicas: int = 1
    ingress_actor_options: Mapping[str, Any] = field(default_factory=lambda: {"num_cpus": 0})
    limits: LimitsSettings | None = None  # None: each ingress replica reads them from its pod's environment
    retry_after_s: float = 1.0
    migration: MigrationSettings = field(default_factory=MigrationSettings)
    scrape_targets: tuple[ScrapeTarget, ...] = ()
    metrics_tenants: tuple[str, ...] = ()
    request_limits: RequestLimits = field(default_factory=RequestLimits)

    @property
    def decode(self) -> PoolSpec:
        """The pool that runs every request to its end (the colocated one without disaggregation)."""
        return next(p for p in self.pools if worker_role(p.role) == "decode")


@dataclass(frozen=True, slots=True)
class EngineDeployment:
    name_prefix: str
    llm_config: LLMConfig
    engine_cls: type[LLMServer]
    bind_kwargs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Topology:
    model: str
    engines: Mapping[WorkerRole, EngineDeployment]  # a colocated pool is the "decode" one
    ingress_options: Mapping[str, Any]
    settings: IngressSettings


def ingress_share(total: int, ingress_replicas: int) -> int:
    """What one ingress replica counts of the engines' `total` slots (or waiting places): Serve's
    proxies spread requests evenly over the replicas, and each replica holds its own line, so each
    counts its share (rounded up: none may have no slot). Counting all of them in every replica
    would let N replicas together fill N times the headroom kept for higher plans."""
    return -(-total // ingress_replicas)


def experimental_configs(role: Role, stream_interval_ms: int) -> dict[str, Any]:
    """Ray Serve LLM's knobs: the pool's NIXL ports, and the interval EngineServer batches tokens on."""
    return {"NIXL_SIDE_CHANNEL_PORT_BASE": NIXL_PORT_BASE[role], "stream_batching_interval_ms": stream_interval_ms}


def _deployment_config(model: str, pool: PoolSpec, routed: bool, serve_router: str) -> dict[str, Any]:
    deployment: dict[str, Any] = {
        # The replica actor only relays; vLLM's engine processes hold the CPUs/GPUs (placement bundles).
        "ray_actor_options": {"num_cpus": 0},
        # Above vLLM's own admission limit, so vLLM (not Ray) decides when a replica is full.
        "max_ongoing_requests": 2 * (pool.max_running + pool.max_waiting),
        # A replica Serve removes waits for its ongoing requests (its streams) up to this long; it
        # checks every second, so an idle one goes at once.
        "graceful_shutdown_timeout_s": pool.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": DRAIN_CHECK_S,
    }
    if pool.autoscaling:
        scaling: dict[str, Any] = {
            "min_replicas": pool.replicas,
            "initial_replicas": pool.replicas if pool.initial_replicas is None else pool.initial_replicas,
            "max_replicas": pool.max_replicas,
        }
        if pool.target_ongoing_requests is not None:
            scaling["target_ongoing_requests"] = pool.target_ongoing_requests
        if pool.downscale_delay_s is not None:
            scaling["downscale_delay_s"] = pool.downscale_delay_s
        if pool.scaling is not None:
            pool_name = DEPLOYMENT_PREFIX[pool.role].removesuffix(":")
            kwargs = {"targets": pool.scaling.wire(), "model": model, "pool": pool_name}
            scaling["policy"] = {"policy_function": POLICY, "policy_kwargs": kwargs}
            # The policy keeps its own delays; Serve's would only add to them.
            scaling |= {"upscale_delay_s": 0, "downscale_delay_s": 0, "downscale_to_zero_delay_s": 0}
        deployment["autoscaling_config"] = scaling
    else:
        deployment["num_replicas"] = pool.replicas
    if routed:  # calls go to the replica glmserve's router chose for them
        deployment["request_router_config"] = {"request_router_class": PINNED_ROUTER}
    elif serve_router == "prefix-affinity":  # as Ray Serve LLM's docs configure it, with its defaults
        deployment["request_router_config"] = {"request_router_class": PREFIX_AFFINITY_ROUTER}
    else:
        deployment["request_router_config"] = {"request_router_class": SERVE_ROUTER}
    return deployment


def llm_config(
    model: str,
    source: str,
    pool: PoolSpec,
    stream_interval_ms: int,
    *,
    routed: bool,
    serve_router: str = "power-of-two",
) -> LLMConfig:
    """Ray Serve LLM's configuration of one pool's deployment; `routed`: glmserve's router picks replicas."""
    extra: dict[str, Any] = {}
    # vLLM's CPU backend; Ray Serve LLM rejects an accelerator_type with it.
    if pool.accelerator == CPU:
        extra["accelerator_config"] = CPU_ACCELERATOR
    elif pool.accelerator is not None:
        extra["accelerator_type"] = pool.accelerator
    if pool.placement is not None:
        extra["placement_group_config"] = {"bundles": list(pool.placement.bundles), "strategy": pool.placement.strategy}
    return LLMConfig(
        model_loading_config={"model_id": model, "model_source": source},
        deployment_config=_deployment_config(model, pool, routed, serve_router),
        engine_kwargs=dict(pool.engine_kwargs),
        experimental_configs=experimental_configs(pool.role, stream_interval_ms),
        log_engine_metrics=True,
        # Before the replica exists, so that vLLM's and NIXL's logging setup keep Serve's handlers.
        runtime_env=RUNTIME_ENV,
        **extra,
    )


def plan(spec: TopologySpec) -> Topology:
    """Every deployment's options, the same for both callers given the same data."""
    engines: dict[WorkerRole, EngineDeployment] = {}
    for pool in spec.pools:
        role = worker_role(pool.role)
        base = spec.events_ports.get(pool.role)
        link = RouterLink((spec.router,), role, spec.model, base) if spec.router else None
        engines[role] = EngineDeployment(
            name_prefix=DEPLOYMENT_PREFIX[pool.role],
            llm_config=llm_config(
                spec.model,
                spec.source,
                pool,
                spec.stream_interval_ms,
                routed=link is not None,
                serve_router=spec.serve_router,
            ),
            engine_cls=pool.engine_cls,
            bind_kwargs={"cpu_binds": list(pool.cpu_binds) or None, "router": link},
        )
    decode = spec.decode
    # The ingress admits for the pool's largest size: below it, requests wait in the engines,
    # where Serve's autoscaler sees them.
    served = ServedModel(
        spec.model,
        spec.max_context,
        spec.thinking_default,
        spec.created,
        checkpoint=spec.source,
        engine_kwargs=dict(decode.engine_kwargs),
        capacity=ingress_share(decode.max_replicas * decode.max_running, spec.ingress_replicas),
        max_waiting=ingress_share(decode.max_replicas * decode.max_waiting, spec.ingress_replicas),
    )
    settings = IngressSettings(
        models=(served,),
        retry_after_s=spec.retry_after_s,
        migration=spec.migration,
        limits=spec.limits,
        router_address=spec.router,
        route_timeout_s=spec.route_timeout_s,
        scrape_targets=spec.scrape_targets,
        metrics_tenants=spec.metrics_tenants,
        request_limits=spec.request_limits,
    )
    options = {
        "num_replicas": spec.ingress_replicas,
        "ray_actor_options": dict(spec.ingress_actor_options),
        "request_router_config": {"request_router_class": SERVE_ROUTER},
        # A stopping ingress replica (a rollout, a scale-down, `glmserve up` stopping) relays its
        # streams to their end, as long as the engines behind it drain theirs; Serve's default
        # (20 s) cut longer streams.
        "graceful_shutdown_timeout_s": max(p.drain_timeout_s for p in spec.pools),
        "graceful_shutdown_wait_loop_s": DRAIN_CHECK_S,
    }
    return Topology(spec.model, engines, options, settings)


def application(topology: Topology) -> Application:
    """Binds the planned deployments (needs Ray: Ray Serve LLM reads its runtime environment)."""
    pools = {
        role: build_llm_deployment(
            engine.llm_config,
            deployment_cls=engine.engine_cls,
            name_prefix=engine.name_prefix,
            bind_kwargs=dict(engine.bind_kwargs),
        )
        for role, engine in topology.engines.items()
    }
    # @serve.deployment turned the class into a Deployment, which mypy cannot see.
    ingress = Ingress.options(**topology.ingress_options)  # type: ignore[attr-defined]
    return ingress.bind(engines={topology.model: pools}, settings=topology.settings)
