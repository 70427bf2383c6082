"""The admission metrics one router/ingress process exports (names live in common/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from glmserve.common import metrics as m


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.auth_failures = m.counter(m.AUTH_FAILURES, self.registry)
        self.decisions = m.counter(m.ADMISSION_DECISIONS, self.registry)
        self.latency = m.histogram(m.ADMISSION_LATENCY, self.registry)
        self.store_up = m.gauge(m.ADMISSION_STORE_UP, self.registry)
        self.fail_open = m.counter(m.ADMISSION_FAIL_OPEN, self.registry)
        self.settlements = m.counter(m.ADMISSION_SETTLEMENTS, self.registry)
        self.leases_lost = m.counter(m.ADMISSION_LEASES_LOST, self.registry)
        self.store_up.set(1)
        # labelled children, looked up once: `labels()` costs more than the admission's arithmetic
        self._decisions: dict[tuple[str, str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def decided(self, plan: str, outcome: str, dimension: str) -> None:
        key = (plan, outcome, dimension)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.decisions.labels(plan, outcome, dimension)
        child.inc()

    def timed(self, source: str, seconds: float) -> None:
        child = self._latency.get(source)
        if child is None:
            child = self._latency[source] = self.latency.labels(source)
        child.observe(seconds)
