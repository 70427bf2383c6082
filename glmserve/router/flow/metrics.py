"""Flow control's Prometheus metrics (names in glmserve.common.metrics). Tenant ids are unbounded:
as in the ingress, only those listed in `flow.metrics_tenants` label series, the rest are "other",
and the wait histogram carries none (per-tenant waits are a sum and a count)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from prometheus_client import CollectorRegistry

from glmserve.common import metrics as m
from glmserve.common.tenancy import PRIORITY_RANK
from glmserve.router.flow.ticket import Ticket

ShedReason = Literal["queue_full", "ttl"]
_CLASS_OF_RANK = {rank: name for name, rank in PRIORITY_RANK.items()}


def priority_label(band: int) -> str:
    return _CLASS_OF_RANK.get(band, str(band))


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, tenants: Collection[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        self.tenants = frozenset(tenants)
        self.queued = m.gauge(m.ROUTER_FLOW_QUEUED, self.registry)
        self.wait = m.histogram(m.ROUTER_FLOW_WAIT, self.registry)
        self.tenant_wait = m.counter(m.ROUTER_FLOW_TENANT_WAIT, self.registry)
        self.dispatched = m.counter(m.ROUTER_FLOW_DISPATCHED, self.registry)
        self.shed = m.counter(m.ROUTER_FLOW_SHED, self.registry)

    def _labels(self, ticket: Ticket) -> tuple[str, str, str]:
        tenant = ticket.tenant if ticket.tenant in self.tenants else m.OTHER_TENANT
        return ticket.model, priority_label(ticket.band), tenant

    def enqueued(self, ticket: Ticket, delta: int) -> None:
        self.queued.labels(*self._labels(ticket)).inc(delta)

    def waited(self, ticket: Ticket, seconds: float) -> None:
        labels = self._labels(ticket)
        self.wait.labels(*labels[:2]).observe(seconds)
        self.tenant_wait.labels(*labels).inc(seconds)
        self.dispatched.labels(*labels).inc()

    def refused(self, ticket: Ticket, reason: ShedReason) -> None:
        self.shed.labels(*self._labels(ticket), reason).inc()
