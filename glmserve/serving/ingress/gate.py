"""Who may send what: API keys to tenants, plan limits, prefix-cache salts, engine slots by priority.

The building blocks are glmserve.admission's (tenants, limiter, cache salt, slots); this wires
them to one ingress replica's settings, for the requests the router does not admit (admit.py).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from glmserve.admission.cache_salt import CacheSalter
from glmserve.admission.limiter import Limiter
from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.slots import PrioritySlots
from glmserve.admission.tenant_source import WatchedTenants
from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import AuthenticationError
from glmserve.serving.ingress.settings import LimitsSettings
from glmserve.serving.ingress.throttle import FailedKeyThrottle


class Gate:
    def __init__(
        self,
        settings: LimitsSettings,
        registry: CollectorRegistry,
        retry_after_s: float,
        throttle: FailedKeyThrottle | None = None,
    ) -> None:
        """`throttle`: refuses clients that keep sending wrong keys (None: never)."""
        metrics = AdmissionMetrics(registry)
        tenants = Path(settings.tenants_file) if settings.tenants_file else None
        self.tenants = WatchedTenants(tenants, metrics)
        self.limiter = Limiter.from_settings(
            settings.redis_url, settings.outage, settings.fail_open_share, metrics=metrics
        )
        secret = settings.cache_salt_secret
        self.salter = CacheSalter(bytes.fromhex(secret)) if secret else CacheSalter.ephemeral()
        self._slots: dict[str, PrioritySlots] = {}
        self._retry_after_s = retry_after_s
        self._throttle = throttle

    def authenticate(self, authorization: str | None, client: str | None = None) -> ResolvedTenant:
        """`client`: the caller's address, whose failed keys are counted (None: unknown, not counted)."""
        if self._throttle is None or client is None:
            return self.tenants.authenticate(authorization)
        self._throttle.check(client)
        try:
            return self.tenants.authenticate(authorization)
        except AuthenticationError:
            self._throttle.failed(client)
            raise

    def slots(self, model: str, capacity: int, max_waiting: int) -> PrioritySlots:
        """The model's engine slots; admitted requests wait there in plan-priority order."""
        if model not in self._slots:
            self._slots[model] = PrioritySlots(capacity, max_waiting, self._retry_after_s)
        return self._slots[model]
