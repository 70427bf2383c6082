"""Who may send what: API keys to tenants, plan limits, prefix-cache salts, shedding by priority.

The building blocks are the router package's (glmserve.router.tenants / limits / cache_salt);
this wires them to one ingress replica's settings.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from glmserve.common.errors import OverloadedError
from glmserve.router.cache_salt import CacheSalter
from glmserve.router.limits.admission import Admission
from glmserve.router.limits.limiter import Limiter, LimiterConfig, OutagePolicy
from glmserve.router.limits.memory import MemoryBackend
from glmserve.router.limits.metrics import AdmissionMetrics
from glmserve.router.limits.redis_backend import RedisBackend
from glmserve.router.tenants import ResolvedTenant
from glmserve.serving.ingress.settings import LimitsSettings
from glmserve.serving.ingress.tenant_source import WatchedTenants

# vLLM's priority scheduling runs lower values first.
ENGINE_PRIORITY = {"critical": 0, "premium": 1, "standard": 2, "batch": 3}
# Under saturation a class is refused once the model's in-flight requests pass this share of its
# capacity, so the lowest plans are shed first and the highest keep the last free slots.
SHED_AT = {"batch": 0.6, "standard": 0.85, "premium": 1.0, "critical": float("inf")}


class Gate:
    def __init__(self, settings: LimitsSettings, registry: CollectorRegistry) -> None:
        metrics = AdmissionMetrics(registry)
        tenants = Path(settings.tenants_file) if settings.tenants_file else None
        self.tenants = WatchedTenants(tenants, metrics)
        store = RedisBackend.from_url(settings.redis_url) if settings.redis_url else MemoryBackend()
        config = LimiterConfig(outage=OutagePolicy(settings.outage), fail_open_share=settings.fail_open_share)
        self.limiter = Limiter(store, config, metrics=metrics)
        secret = settings.cache_salt_secret
        self.salter = CacheSalter(bytes.fromhex(secret)) if secret else CacheSalter.ephemeral()
        self._in_flight: dict[str, int] = {}

    def authenticate(self, authorization: str | None) -> ResolvedTenant:
        return self.tenants.authenticate(authorization)

    async def admit(
        self, tenant: ResolvedTenant, model: str, prompt_tokens: int, max_tokens: int | None, capacity: int
    ) -> Admission:
        """Plan limits first (one store round trip), then load shedding by plan priority."""
        self.shed(tenant, model, capacity)
        return await self.limiter.admit(tenant, model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens)

    def shed(self, tenant: ResolvedTenant, model: str, capacity: int) -> None:
        """Counts the requests running besides this one (which `started` already counted)."""
        if capacity and self._in_flight.get(model, 0) - 1 >= SHED_AT[tenant.priority] * capacity:
            raise OverloadedError(
                f"{model} is saturated; requests of plan '{tenant.plan}' are shed first, retry shortly",
                retry_after_s=1.0,
            )

    def started(self, model: str) -> None:
        self._in_flight[model] = self._in_flight.get(model, 0) + 1

    def finished(self, model: str) -> None:
        self._in_flight[model] -= 1
