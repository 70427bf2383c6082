"""What one ingress replica is told at deploy time (plain data: it crosses Ray's actor boundary)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from glmserve.router.client import DEFAULT_ROUTE_TIMEOUT_S
from glmserve.serving.ingress.discovery import ScrapeTarget
from glmserve.serving.ingress.limits import RequestLimits


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    max_context: int
    thinking_default: bool
    created: int
    checkpoint: str  # where the ingress loads the tokenizer and chat template from
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # the engines', so prompts render alike
    capacity: int = 0  # requests all its decode replicas run at once (0: unknown, no shedding)
    max_waiting: int = 0  # admitted requests that may wait for one of those slots before the lowest are shed


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    tenants_file: str | None = None  # None: no authentication, one open tenant (local mode)
    redis_url: str | None = None  # None: in-process limits (one ingress replica)
    outage: Literal["fail-open", "fail-closed"] = "fail-open"
    fail_open_share: float = 1.0
    cache_salt_secret: str | None = None  # hex; None: a random one per process


@dataclass(frozen=True, slots=True)
class MigrationSettings:
    """How requests move off an engine that fails them (migration.py)."""

    limit: int = 3  # moves per request; 0: a failed engine fails its requests
    stall_timeout_s: float = 60.0  # an engine silent this long on a streamed request has stalled; 0: never


@dataclass(frozen=True, slots=True)
class IngressSettings:
    models: tuple[ServedModel, ...]
    retry_after_s: float = 1.0
    # None: each replica reads them from its own pod's environment (limits_from_environment).
    limits: LimitsSettings | None = field(default_factory=LimitsSettings)
    router_address: str | None = None  # glmserve's router (gRPC target; shards' separated by ';'); None: Serve alone
    route_timeout_s: float = DEFAULT_ROUTE_TIMEOUT_S  # must outlast the router's flow.queue_ttl_s
    scrape_targets: tuple[ScrapeTarget, ...] = ()  # every metrics endpoint of the stack, for /metrics/sd
    metrics_tenants: tuple[str, ...] = ()  # tenant ids the metrics name; the rest count as "other"
    migration: MigrationSettings = field(default_factory=MigrationSettings)
    request_limits: RequestLimits = field(default_factory=RequestLimits)


def limits_from_environment() -> LimitsSettings:
    """Tenancy the operator hands the ingress pods (the router's rendered config, Redis, the salt
    secret). Read by each ingress replica on its own pod: Serve builds the application elsewhere
    (on the head, whose pod has none of these)."""
    return LimitsSettings(
        tenants_file=os.environ.get("GLMSERVE_TENANTS_FILE"),
        redis_url=os.environ.get("GLMSERVE_REDIS_URL"),
        outage="fail-closed" if os.environ.get("GLMSERVE_LIMITS_OUTAGE") == "fail-closed" else "fail-open",
        cache_salt_secret=os.environ.get("GLMSERVE_CACHE_SALT_SECRET"),
    )
