"""Admission in the router: each v2 Route is admitted against its tenant's plan (glmserve.admission)
before it is routed, and its admission is settled once, when the request ends.

The ingress authenticated the API key and sends the tenant's id; the router looks the tenant up in
the same tenants file, so the plan (limits, priority) is the router's to apply. An admission is
settled by the request's Complete, by the Route itself when it fails or is cancelled after
admitting, or, for a request whose ingress never reports back, by the sweep after
`request_ttl_s`, charged as admitted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from glmserve.admission.limiter import Limiter
from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.outcome import Admission
from glmserve.admission.tenant_source import WatchedTenants
from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import AuthenticationError
from glmserve.router.config import AdmissionConfig
from glmserve.router.types import Admitted, RouteQuery, Usage

log = logging.getLogger("glmserve.router")


@dataclass(frozen=True, slots=True)
class _Open:
    admission: Admission
    until: float  # time.monotonic() past which the sweep settles it


class Admitter:
    def __init__(self, tenants: WatchedTenants, limiter: Limiter, *, request_ttl_s: float) -> None:
        self._tenants = tenants
        self._limiter = limiter
        self._ttl_s = request_ttl_s
        self._open: dict[str, _Open] = {}

    @property
    def tenants(self) -> WatchedTenants:
        return self._tenants

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    @classmethod
    def from_config(cls, config: AdmissionConfig, registry: CollectorRegistry, request_ttl_s: float) -> Admitter | None:
        """None when no tenants file is configured: the router does not admit."""
        if config.tenants_file is None:
            return None
        metrics = AdmissionMetrics(registry)
        tenants = WatchedTenants(Path(config.tenants_file), metrics)
        limiter = Limiter.from_settings(config.redis_url, config.outage, config.fail_open_share, metrics=metrics)
        log.info(
            "admitting requests: tenants from %s, limits in %s (%s)",
            config.tenants_file,
            "Redis" if config.redis_url else "memory",
            config.outage,
        )
        return cls(tenants, limiter, request_ttl_s=request_ttl_s)

    async def admit(self, query: RouteQuery) -> tuple[ResolvedTenant, Admitted]:
        """The tenant (whose plan's priority replaces the one sent) and what the ingress is told. Raises
        AuthenticationError for a tenant the tenants file does not hold, the plan's 400/403, 503
        when the limits store is down and the policy is fail-closed, and RateLimitedError (with the
        429's headers) when the plan's limits refuse it. A request id admitted already (the ingress
        routes it again) keeps its admission."""
        tenant = self._tenants.get(query.tenant)
        if tenant is None:
            raise AuthenticationError(
                f"the router does not know tenant {query.tenant!r} (its tenants file is older or newer than the "
                "ingress's)",
                code="unknown_tenant",
            )
        held = self._open.get(query.request_id)
        if held is not None:
            return tenant, _admitted(held.admission)
        # A Route cancelled while the store decides leaves nothing behind: the store refunds an
        # admission whose caller went away (RedisBackend's orphans).
        admission = await self._limiter.admit(
            tenant, model=query.model, prompt_tokens=len(query.tokens), max_tokens=query.max_tokens or None
        )
        if not admission.allowed:
            raise admission.error()
        self._open[query.request_id] = _Open(admission, time.monotonic() + self._ttl_s)
        return tenant, _admitted(admission)

    def settle(self, request_id: str, usage: Usage) -> bool:
        """Settles the request's admission with the usage delivered, however it ended (a prompt
        count of 0: as admitted); False when it has none open."""
        held = self._open.pop(request_id, None)
        if held is None:
            return False
        self._limiter.settle(
            held.admission, output_tokens=usage.completion_tokens, input_tokens=usage.prompt_tokens or None
        )
        return True

    def abandon(self, request_id: str) -> None:
        """The Route failed or was cancelled after admitting: nothing was served, all is refunded."""
        held = self._open.pop(request_id, None)
        if held is not None:
            self._limiter.settle(held.admission, output_tokens=0, input_tokens=0)

    def sweep(self) -> list[str]:
        """Settles, as admitted, the admissions of requests never completed within request_ttl_s."""
        now = time.monotonic()
        expired = [request_id for request_id, held in self._open.items() if held.until <= now]
        for request_id in expired:
            admission = self._open.pop(request_id).admission
            self._limiter.settle(admission, output_tokens=admission.cost.output_tokens)
        return expired

    async def aclose(self) -> None:
        await self._limiter.aclose()


def _admitted(admission: Admission) -> Admitted:
    return Admitted(admission.headers(), admission.engine_max_tokens)
