"""The ingress's Prometheus metrics and trace spans, and the per-request recorder that feeds both."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import get_args

from opentelemetry import trace
from opentelemetry.context import Context
from prometheus_client import CollectorRegistry

from glmserve.common import metrics as m
from glmserve.common import tracing as t
from glmserve.serving.ingress.pd import PrefillFallback
from glmserve.serving.ingress.responses import Usage

# Each fallback reason's series exists from a model's first remote prefill on, so that a rate()
# over it reads 0 rather than nothing.
PREFILL_FALLBACK_REASONS: tuple[PrefillFallback, ...] = get_args(PrefillFallback)
ROUTER_UNAVAILABLE = "unavailable"
_OPERATIONS = {"chat": "chat", "completions": "text_completion"}  # OpenTelemetry GenAI names


class IngressMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        tracer: trace.Tracer | None = None,
        tenants: Collection[str] = (),
        trust_client_trace: bool = False,
    ) -> None:
        """`tenants`: the tenant ids metrics name; every other tenant counts as "other".
        `trust_client_trace`: continue a client's `traceparent` (else a new trace links to it)."""
        self.registry = registry or CollectorRegistry()
        self.tracer = tracer or trace.NoOpTracer()
        self._trust_client_trace = trust_client_trace
        self._tenants = frozenset(tenants)
        self.requests = m.counter(m.INGRESS_REQUESTS, self.registry)
        self.ttft = m.histogram(m.INGRESS_TTFT, self.registry)
        self.itl = m.histogram(m.INGRESS_ITL, self.registry)
        self.duration = m.histogram(m.INGRESS_E2E, self.registry)
        self.tokens = m.counter(m.INGRESS_TOKENS, self.registry)
        self.cached_tokens = m.counter(m.INGRESS_CACHED_TOKENS, self.registry)
        self.in_flight = m.gauge(m.INGRESS_IN_FLIGHT, self.registry)
        self.waiting = m.gauge(m.INGRESS_WAITING, self.registry)
        self.share_scale = m.gauge(m.INGRESS_SHARE_SCALE, self.registry)
        self.remote_prefill = m.histogram(m.INGRESS_REMOTE_PREFILL, self.registry)
        self.prefill_fallbacks = m.counter(m.INGRESS_PREFILL_FALLBACKS, self.registry)
        self.router_fallbacks = m.counter(m.INGRESS_ROUTER_FALLBACKS, self.registry)
        self.migrations = m.counter(m.INGRESS_MIGRATIONS, self.registry)
        # Read as 0, not as nothing, until the router first fails.
        self.router_fallbacks.labels(ROUTER_UNAVAILABLE)

    def router_fallback(self, reason: str) -> None:
        self.router_fallbacks.labels(reason).inc()

    def start(
        self, endpoint: str, model: str, *, plan: str, tenant: str, headers: Mapping[str, str] | None = None
    ) -> RequestTimer:
        """`headers`: the HTTP request's, which may carry the client's trace context."""
        self.in_flight.labels(model, plan).inc()
        operation = _OPERATIONS.get(endpoint, endpoint)
        parent, links = t.server_parent(headers or {}, self._trust_client_trace)
        span = self.tracer.start_span(
            f"{operation} {model}",
            context=parent,
            links=links,
            kind=trace.SpanKind.SERVER,
            attributes={t.OPERATION: operation, t.MODEL: model, t.PLAN: plan, t.TENANT: tenant},
        )
        tenant_label = tenant if tenant in self._tenants else m.OTHER_TENANT
        return RequestTimer(self, endpoint, model, plan, tenant_label, span)


@dataclass(slots=True)
class RequestTimer:
    """One request's telemetry: latency and token metrics, its span and its stages' child spans."""

    metrics: IngressMetrics
    endpoint: str
    model: str
    plan: str
    tenant: str
    span: trace.Span
    started: float = field(default_factory=time.perf_counter)
    last_token: float | None = None
    done: bool = False
    stage: trace.Span | None = None
    stage_started: float = 0.0
    on_gap: Callable[[float, int], None] | None = None  # (gap, tokens): the engines' pace, for slots

    @property
    def context(self) -> Context:
        """The request's trace context, for calls that carry it on (t.grpc_metadata(timer.context))."""
        return trace.set_span_in_context(self.span)

    def begin(self, stage: str) -> trace.Span:
        """Ends the running stage's span and starts `stage`'s (prefill, decode, generate)."""
        self._end_stage()
        self.stage = self.metrics.tracer.start_span(stage, context=self.context, kind=trace.SpanKind.CLIENT)
        self.stage_started = time.perf_counter()
        return self.stage

    def routed(self, prefill_worker: str | None, decode_worker: str, expected_cached_tokens: int, policy: str) -> None:
        """The router's decision: the request's chosen workers (prefill None: decode prefills)."""
        self.span.set_attributes({t.DECODE_WORKER: decode_worker, t.EXPECTED_CACHED_TOKENS: expected_cached_tokens})
        if prefill_worker is not None:
            self.span.set_attribute(t.PREFILL_WORKER, prefill_worker)
        if self.stage is not None:
            self.stage.set_attribute(t.ROUTE_POLICY, policy)

    def prefilled(self, fallback: PrefillFallback | None, kv_engine: str | None) -> None:
        """Remote prefill ended: its KV is on NIXL engine `kv_engine`, or decode prefills locally
        for `fallback`."""
        for reason in PREFILL_FALLBACK_REASONS:
            self.metrics.prefill_fallbacks.labels(self.model, reason)
        if fallback is not None:
            self.metrics.prefill_fallbacks.labels(self.model, fallback).inc()
        else:
            self.metrics.remote_prefill.labels(self.model).observe(time.perf_counter() - self.stage_started)
        if self.stage is not None:
            self.stage.set_attributes(
                {t.PREFILL_FALLBACK: fallback} if fallback else {t.KV_SOURCE_ENGINE: kv_engine} if kv_engine else {}
            )

    def migrated(self, moved: bool) -> None:
        """Its engine failed it: it moved to another replica, or could not."""
        self.metrics.migrations.labels(self.model, "moved" if moved else "refused").inc()
        self.span.add_event("migrated" if moved else "migration refused")

    def tokens_sent(self, events: int) -> None:
        """`events` streamed chunks left together; spread the gap since the last batch over them."""
        now = time.perf_counter()
        if self.last_token is None:
            self.metrics.ttft.labels(self.model, self.plan).observe(now - self.started)
            events -= 1
        elif events > 0:
            gap = (now - self.last_token) / events
            itl = self.metrics.itl.labels(self.model)
            for _ in range(events):
                itl.observe(gap)
            if self.on_gap is not None:
                self.on_gap(gap, events)
        self.last_token = now

    def finish(self, status: int, usage: Usage | None = None) -> None:
        if self.done:
            return
        self.done = True
        usage = usage or Usage()
        metrics = self.metrics
        metrics.in_flight.labels(self.model, self.plan).dec()
        metrics.requests.labels(self.endpoint, self.model, str(status), self.plan, self.tenant).inc()
        metrics.duration.labels(self.endpoint, self.model, self.plan).observe(time.perf_counter() - self.started)
        if usage.prompt_tokens:
            metrics.tokens.labels(self.model, "input", self.plan, self.tenant).inc(usage.prompt_tokens)
        if usage.completion_tokens:
            metrics.tokens.labels(self.model, "output", self.plan, self.tenant).inc(usage.completion_tokens)
        if usage.cached_tokens:
            metrics.cached_tokens.labels(self.model, self.plan).inc(usage.cached_tokens)
        self.span.set_attributes(
            {
                t.HTTP_STATUS: status,
                t.INPUT_TOKENS: usage.prompt_tokens,
                t.OUTPUT_TOKENS: usage.completion_tokens,
                t.CACHED_TOKENS: usage.cached_tokens,
            }
        )
        failed = status >= 500
        self._end_stage(failed)
        if failed:
            self.span.set_status(trace.StatusCode.ERROR, f"HTTP {status}")
        self.span.end()

    def _end_stage(self, failed: bool = False) -> None:
        if self.stage is not None:
            if failed:
                self.stage.set_status(trace.StatusCode.ERROR)
            self.stage.end()
            self.stage = None
