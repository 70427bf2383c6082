"""Every metric glmserve exports, named once (Prometheus conventions: base units, `_total` counters).

Components instantiate only the families they own, so a process never exports
another component's metrics at zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Kind = Literal["counter", "gauge", "histogram"]

# Latencies of a 2-core laptop and of an H100 node both fall inside these.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS


INGRESS_REQUESTS = MetricSpec(
    "glmserve_ingress_requests_total",
    "counter",
    "Requests answered by the OpenAI ingress, by endpoint, model and HTTP status.",
    ("endpoint", "model", "status"),
)
INGRESS_TTFT = MetricSpec(
    "glmserve_ingress_time_to_first_token_seconds",
    "histogram",
    "Time from request arrival at the ingress to its first generated token leaving it.",
    ("model",),
)
INGRESS_ITL = MetricSpec(
    "glmserve_ingress_inter_token_latency_seconds",
    "histogram",
    "Time between consecutive streamed tokens of one request, at the ingress.",
    ("model",),
    ITL_BUCKETS,
)
INGRESS_E2E = MetricSpec(
    "glmserve_ingress_request_duration_seconds",
    "histogram",
    "Time from request arrival to the last byte of the response, by endpoint and model.",
    ("endpoint", "model"),
)
INGRESS_TOKENS = MetricSpec(
    "glmserve_ingress_tokens_total",
    "counter",
    "Prompt (direction=input) and generated (direction=output) tokens of completed requests.",
    ("model", "direction"),
)
INGRESS_IN_FLIGHT = MetricSpec(
    "glmserve_ingress_requests_in_flight",
    "gauge",
    "Requests the ingress is currently serving.",
    ("model",),
)


def counter(spec: MetricSpec, registry: CollectorRegistry) -> Counter:
    assert spec.kind == "counter", spec.name
    # prometheus_client appends `_total` itself.
    return Counter(spec.name.removesuffix("_total"), spec.help, spec.labels, registry=registry)


def gauge(spec: MetricSpec, registry: CollectorRegistry) -> Gauge:
    assert spec.kind == "gauge", spec.name
    return Gauge(spec.name, spec.help, spec.labels, registry=registry)


def histogram(spec: MetricSpec, registry: CollectorRegistry) -> Histogram:
    assert spec.kind == "histogram", spec.name
    return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
