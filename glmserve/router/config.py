"""`glmserve router serve --config FILE`: the router's YAML configuration, validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from glmserve.common.errors import ConfigError, validation_problems
from glmserve.common.tenancy import PriorityClass
from glmserve.router.flow.config import FlowConfig
from glmserve.router.types import Role, WorkerInfo

Policy = Literal["precise", "approximate", "least-load", "round-robin"]
Fraction = Annotated[float, Field(gt=0, le=1)]
DEFAULT_FILTERS = ("allowed", "healthy", "model", "role", "not-overloaded")
# What each policy scores with, for both pools, unless `profiles` says otherwise. Precise and
# approximate score alike and differ only in where the cached prefixes come from (estimates.py).
# Prefix affinity dominates, as in llm-d's default profile: spreading a prefix's traffic for a
# moment's balance fills more caches with it and evicts more (benchmarks/routing measures this).
_CACHE_AWARE = {"prefix-cache": 3.0, "prefill-work": 1.0, "load": 1.0, "kv-cache-utilization": 0.5}
PRESETS: dict[Policy, tuple[dict[str, float], str]] = {
    "precise": (_CACHE_AWARE, "max-score"),
    "approximate": (_CACHE_AWARE, "max-score"),
    "least-load": ({"load": 1.0}, "max-score"),
    "round-robin": ({}, "round-robin"),
}

_LOAD_LIMITS: dict[PriorityClass, float] = {"batch": 0.8, "standard": 0.95, "premium": 1.0, "critical": 1.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileConfig(_Strict):
    """One pool's pipeline: filters in order, then scorers summed with weights, then a picker."""

    filters: list[str] = Field(default_factory=lambda: list(DEFAULT_FILTERS))
    scorers: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    picker: str = "max-score"

    @model_validator(mode="after")
    def _known_plugins(self) -> Self:
        from glmserve.router.plugins.registry import FILTERS, PICKERS, SCORERS

        for kind, names, known in (
            ("filter", self.filters, FILTERS),
            ("scorer", list(self.scorers), SCORERS),
            ("picker", [self.picker], PICKERS),
        ):
            for name in names:
                if name not in known:
                    raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")
        return self


class OverloadConfig(_Strict):
    """When the not-overloaded filter drops a worker. Load is running + waiting requests (or the
    router's own in-flight count if higher) over the worker's max_running_requests; lower
    priorities stop short of full so that premium traffic still finds room."""

    load_limit: dict[PriorityClass, Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: dict(_LOAD_LIMITS))
    max_kv_cache_usage: Fraction = 0.98
    default_max_running_requests: int = Field(default=64, ge=1, description="for workers that register 0")


class DisaggregationConfig(_Strict):
    min_remote_prefill_tokens: int = Field(
        default=512,
        ge=0,
        description="prefill remotely only when at least this many prompt tokens are uncached on decode",
    )


class StaticWorker(_Strict):
    worker_id: str = Field(min_length=1)
    role: Role = "decode"
    model: str = Field(min_length=1)
    address: str = ""
    kv_events_endpoint: str = ""
    kv_replay_endpoint: str = ""
    kv_events_topic: str = ""
    block_size: int = Field(default=16, ge=1)
    max_running_requests: int = Field(default=0, ge=0)
    kv_cache_blocks: int = Field(default=0, ge=0)

    def info(self) -> WorkerInfo:
        return WorkerInfo(**self.model_dump())


class WorkersConfig(_Strict):
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    lease_s: float = Field(default=6.0, gt=0, description="no heartbeat for this long: not routed to")
    forget_after_s: float = Field(default=60.0, gt=0, description="no heartbeat for this long: dropped with its index")
    static: list[StaticWorker] = Field(default_factory=list, description="workers that never heartbeat")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.heartbeat_interval_s < self.lease_s <= self.forget_after_s:
            raise ValueError("need heartbeat_interval_s < lease_s <= forget_after_s")
        return self


class ScoringConfig(_Strict):
    prefill_work_floor_tokens: int = Field(
        default=1024, ge=1, description="prefill-work: cost differences well below this many tokens barely count"
    )


class EventsConfig(_Strict):
    replay_timeout_s: float = Field(default=2.0, gt=0, description="wait this long for an engine's replay to end")
    expect_s: float = Field(
        default=10.0,
        ge=0,
        description="precise policy: a routed prompt's blocks count as cached on its worker for this long, "
        "or until the engine's events report them; covers the prefill before the events (0: off)",
    )


class CandidatesConfig(_Strict):
    """Which workers of a large pool a decision scores: the ones holding the longest cached prefixes
    of the prompt and the least loaded, so its cost does not grow with the pool. Where every one of
    them is filtered out (all overloaded, say), the whole pool is filtered and scored."""

    exhaustive_up_to: int = Field(default=64, ge=1, description="pools of at most this many workers are scored whole")
    prefix_holders: int = Field(
        default=16, ge=1, description="score the workers holding the longest cached prefixes, at least this many"
    )
    least_loaded: int = Field(default=16, ge=1, description="and this many of the least loaded healthy workers")


class ShardConfig(_Strict):
    """This replica's shard of the engines (shards.py): it indexes and routes to the engines whose
    id the shard owns, and ignores the others' registrations and heartbeats."""

    count: int = Field(default=1, ge=1, description="shards the engines are split into (1: no sharding)")
    index: int = Field(default=0, ge=0, description="this replica's shard, 0..count-1")

    @model_validator(mode="after")
    def _in_range(self) -> Self:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} must be below count {self.count}")
        return self


class HashingConfig(_Strict):
    algo: Literal["sha256_cbor"] = Field(default="sha256_cbor", description="the engines' prefix_caching_hash_algo")
    seed: str | None = Field(default=None, description="the engines' PYTHONHASHSEED; unset: vLLM's default seed")


class ApproximateConfig(_Strict):
    """The approximate policy's cache estimate (no events): where this router sent each chunk."""

    chunk_tokens: int = Field(default=64, ge=1)
    capacity_chunks: int = Field(default=31250, ge=1, description="per worker, as llm-d's lruCapacityPerServer")


class AdmissionConfig(_Strict):
    """Plan limits the router enforces in Route (glmserve.admission): the tenants file the ingress
    authenticates with and the store the limits live in. Without a tenants file the router admits
    nothing and each ingress admits on its own."""

    tenants_file: Path | None = Field(
        default=None, description="plans and tenants (YAML, key digests); re-read when it changes; null: no admission"
    )
    redis_url: str | None = Field(
        default=None,
        pattern=r"^rediss?://",
        description="limits shared by every router replica and ingress in Redis; null: in this process's memory, "
        "lost when it restarts",
    )
    outage: Literal["fail-open", "fail-closed"] = Field(
        default="fail-open", description="Redis unreachable: admit on this replica's local limits, or answer 503"
    )
    fail_open_share: Fraction = Field(
        default=1.0, description="during an outage each replica grants this share of every limit on its own"
    )


class EnvoyRateLimitConfig(_Strict):
    """Envoy's rate-limit service API on the router's gRPC port (envoy_rls.py,
    docs/envoy-rate-limit.md), answered from the plans and store of `admission`."""

    enabled: bool = False
    domain: str = Field(default="glmserve", min_length=1, description="the `domain` of Envoy's rate-limit filter")


class RouterConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(default=50051, ge=0, le=65535, description="0: any free port")
    metrics_port: int | None = Field(default=9464, ge=0, le=65535, description="Prometheus /metrics; null: off")
    policy: Policy = "precise"
    profiles: dict[Role, ProfileConfig] = Field(default_factory=dict, description="overrides the policy's")
    seed: int = Field(default=0, description="tie-breaks are drawn from (seed, request_id): replicas agree")
    max_prompt_tokens: int = Field(default=1 << 20, ge=1)
    request_ttl_s: float = Field(default=3600.0, gt=0, description="forget a routed request never completed")
    hashing: HashingConfig = HashingConfig()
    overload: OverloadConfig = OverloadConfig()
    scoring: ScoringConfig = ScoringConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    shard: ShardConfig = ShardConfig()
    disaggregation: DisaggregationConfig = DisaggregationConfig()
    workers: WorkersConfig = WorkersConfig()
    events: EventsConfig = EventsConfig()
    approximate: ApproximateConfig = ApproximateConfig()
    admission: AdmissionConfig = AdmissionConfig()
    flow: FlowConfig = FlowConfig()
    envoy_rate_limit: EnvoyRateLimitConfig = EnvoyRateLimitConfig()

    @model_validator(mode="after")
    def _envoy_has_plans(self) -> Self:
        if self.envoy_rate_limit.enabled and self.admission.tenants_file is None:
            raise ValueError("envoy_rate_limit.enabled needs admission.tenants_file: the plans it answers from")
        return self

    def profile(self, role: Role) -> ProfileConfig:
        if role in self.profiles:
            return self.profiles[role]
        scorers, picker = PRESETS[self.policy]
        return ProfileConfig(scorers=scorers, picker=picker)


def load_config(path: Path | None, **overrides: object) -> RouterConfig:
    """The config file (none: all defaults) with `overrides` that are not None applied on top."""
    settings: dict[str, object] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read router config {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"router config {path} must hold a mapping of settings")
        settings.update(loaded)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RouterConfig.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(f"invalid router config: {validation_problems(exc)}") from None
