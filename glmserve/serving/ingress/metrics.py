"""The ingress's Prometheus metrics and the per-request recorder that feeds them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from glmserve.common import metrics as m


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = m.counter(m.INGRESS_REQUESTS, self.registry)
        self.ttft = m.histogram(m.INGRESS_TTFT, self.registry)
        self.itl = m.histogram(m.INGRESS_ITL, self.registry)
        self.duration = m.histogram(m.INGRESS_E2E, self.registry)
        self.tokens = m.counter(m.INGRESS_TOKENS, self.registry)
        self.in_flight = m.gauge(m.INGRESS_IN_FLIGHT, self.registry)
        self.router_fallbacks = m.counter(m.INGRESS_ROUTER_FALLBACKS, self.registry)

    def router_fallback(self, reason: str) -> None:
        self.router_fallbacks.labels(reason).inc()

    def start(self, endpoint: str, model: str) -> RequestTimer:
        self.in_flight.labels(model).inc()
        return RequestTimer(self, endpoint, model)


@dataclass(slots=True)
class RequestTimer:
    metrics: IngressMetrics
    endpoint: str
    model: str
    started: float = field(default_factory=time.perf_counter)
    last_token: float | None = None
    done: bool = False

    def tokens_sent(self, events: int) -> None:
        """`events` streamed chunks left together; spread the gap since the last batch over them."""
        now = time.perf_counter()
        if self.last_token is None:
            self.metrics.ttft.labels(self.model).observe(now - self.started)
            events -= 1
        elif events > 0:
            gap = (now - self.last_token) / events
            itl = self.metrics.itl.labels(self.model)
            for _ in range(events):
                itl.observe(gap)
        self.last_token = now

    def finish(self, status: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        self.metrics.in_flight.labels(self.model).dec()
        self.metrics.requests.labels(self.endpoint, self.model, str(status)).inc()
        self.metrics.duration.labels(self.endpoint, self.model).observe(time.perf_counter() - self.started)
        if prompt_tokens:
            self.metrics.tokens.labels(self.model, "input").inc(prompt_tokens)
        if completion_tokens:
            self.metrics.tokens.labels(self.model, "output").inc(completion_tokens)
