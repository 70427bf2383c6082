"""Flow control's Prometheus metrics (names in glmserve.common.metrics). Tenants label them: the
router only serves the tenants of its tenants file, so their number is bounded by configuration."""

from __future__ import annotations

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
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.queued = m.gauge(m.ROUTER_FLOW_QUEUED, self.registry)
        self.wait = m.histogram(m.ROUTER_FLOW_WAIT, self.registry)
        self.shed = m.counter(m.ROUTER_FLOW_SHED, self.registry)

    def enqueued(self, ticket: Ticket, delta: int) -> None:
        self.queued.labels(ticket.model, priority_label(ticket.band), ticket.tenant).inc(delta)

    def waited(self, ticket: Ticket, seconds: float) -> None:
        self.wait.labels(ticket.model, priority_label(ticket.band), ticket.tenant).observe(seconds)

    def refused(self, ticket: Ticket, reason: ShedReason) -> None:
        self.shed.labels(ticket.model, priority_label(ticket.band), ticket.tenant, reason).inc()
