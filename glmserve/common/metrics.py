"""Every metric glmserve exports, named once (Prometheus conventions: base units, `_total` counters).

Components instantiate only the families they own, so a process never exports
another component's metrics at zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

Kind = Literal["counter", "gauge", "histogram"]

# `*_created` series double every counter's and histogram's exposition and no dashboard reads them.
disable_created_metrics()

# Latencies of a 2-core laptop and of an H100 node both fall inside these.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
# A routing decision takes well under a millisecond; one plugin, microseconds.
ROUTER_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


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
INGRESS_ROUTER_FALLBACKS = MetricSpec(
    "glmserve_ingress_router_fallbacks_total",
    "counter",
    "Requests the ingress sent without a router decision (the router was unreachable or too slow).",
    ("reason",),
)
INGRESS_IN_FLIGHT = MetricSpec(
    "glmserve_ingress_requests_in_flight",
    "gauge",
    "Requests the ingress is currently serving.",
    ("model",),
)

ROUTER_ROUTES = MetricSpec(
    "glmserve_router_routes_total",
    "counter",
    "Route decisions by model and outcome (local_prefill, remote_prefill, no_endpoints, overloaded, invalid).",
    ("model", "outcome"),
)
ROUTER_ROUTE_DURATION = MetricSpec(
    "glmserve_router_route_duration_seconds",
    "histogram",
    "Time the router spends deciding one Route call (hashing, filters, scorers, pickers).",
    (),
    ROUTER_BUCKETS,
)
ROUTER_PLUGIN_DURATION = MetricSpec(
    "glmserve_router_plugin_duration_seconds",
    "histogram",
    "Time one routing plugin takes for one request, by pool profile, plugin kind and plugin name.",
    ("profile", "kind", "plugin"),
    ROUTER_BUCKETS,
)
ROUTER_PROMPT_TOKENS = MetricSpec(
    "glmserve_router_routed_prompt_tokens_total",
    "counter",
    "Prompt tokens of routed requests, split by whether the chosen worker was expected to have them cached.",
    ("model", "cached"),
)
ROUTER_COMPLETED_TOKENS = MetricSpec(
    "glmserve_router_completed_tokens_total",
    "counter",
    "Tokens of completed requests as the ingress reported them (kind: prompt, cached, completion).",
    ("tenant", "kind"),
)
ROUTER_KV_EVENTS = MetricSpec(
    "glmserve_router_kv_events_total",
    "counter",
    "vLLM KV-cache events applied to the index, by type (BlockStored, BlockRemoved, AllBlocksCleared, malformed).",
    ("type",),
)
ROUTER_KV_EVENT_GAPS = MetricSpec(
    "glmserve_router_kv_event_gaps_total",
    "counter",
    "Breaks in an engine's event sequence, by outcome (replayed, lost, engine_restart).",
    ("outcome",),
)
ROUTER_INDEX_BLOCKS = MetricSpec(
    "glmserve_router_index_blocks",
    "gauge",
    "(worker, block) entries in the router's KV index.",
)
ROUTER_WORKERS = MetricSpec(
    "glmserve_router_workers",
    "gauge",
    "Registered workers by pool role and state (healthy, unhealthy).",
    ("role", "state"),
)
ROUTER_IN_FLIGHT = MetricSpec(
    "glmserve_router_requests_in_flight",
    "gauge",
    "Requests routed by this router whose completion it has not been told yet.",
)


# Admission at the router/ingress: tenants, plan limits, the shared limits store.
# Plans, not tenants, label these: plans are few, tenants are many (and keys never appear at all).
ADMISSION_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

AUTH_FAILURES = MetricSpec(
    "glmserve_auth_failures_total",
    "counter",
    "Requests refused before admission because of their API key (reason: missing, malformed, unknown).",
    ("reason",),
)
ADMISSION_DECISIONS = MetricSpec(
    "glmserve_admission_decisions_total",
    "counter",
    "Rate-limit decisions by plan, outcome (allowed, limited, unavailable) and limiting dimension "
    "(none, requests, input_tokens, output_tokens, concurrency).",
    ("plan", "outcome", "dimension"),
)
ADMISSION_LATENCY = MetricSpec(
    "glmserve_admission_decision_duration_seconds",
    "histogram",
    "Time to decide one admission, by where it was decided (store, local: fail-open fallback).",
    ("source",),
    ADMISSION_LATENCY_BUCKETS,
)
ADMISSION_STORE_UP = MetricSpec(
    "glmserve_admission_store_up",
    "gauge",
    "1 while the shared limits store (Redis) answers, 0 while its outage policy is in force.",
)
ADMISSION_FAIL_OPEN = MetricSpec(
    "glmserve_admission_fail_open_decisions_total",
    "counter",
    "Admissions decided on this replica's local, approximate limits because the limits store was down.",
)
ADMISSION_SETTLEMENTS = MetricSpec(
    "glmserve_admission_settlements_total",
    "counter",
    "Ends of admitted requests by outcome: settled, duplicate (lease already gone), deferred (store "
    "down, retried), lost (store down until the lease expired).",
    ("outcome",),
)
ADMISSION_LEASES_LOST = MetricSpec(
    "glmserve_admission_leases_lost_total",
    "counter",
    "Concurrency leases that expired while their request was still running (renewal came too late).",
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
