"""Every metric glmserve exports or reads, named once (Prometheus conventions: base units, `_total` counters).

Components instantiate only the families they own, so a process never exports
another component's metrics at zero. Dashboards (glmserve.dashboards), alerts
(glmserve.operator.build.monitoring) and the live dashboard test take their names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

Kind = Literal["counter", "gauge", "histogram"]
Component = Literal["ingress", "router", "limits", "engine", "serve"]

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
    only_with: str = ""  # the feature a stack must run for the metric to exist at all ("": always)


# Requests the ingress labels with a tenant id outside `metrics_tenants` (tenants are unbounded,
# plans are few: plans label every series, tenant ids only those an operator chose).
OTHER_TENANT = "other"

INGRESS_REQUESTS = MetricSpec(
    "glmserve_ingress_requests_total",
    "counter",
    "Requests answered by the OpenAI ingress, by endpoint, model, HTTP status, tenant plan and tenant "
    '(tenant="other" unless listed in metrics_tenants).',
    ("endpoint", "model", "status", "plan", "tenant"),
)
INGRESS_TTFT = MetricSpec(
    "glmserve_ingress_time_to_first_token_seconds",
    "histogram",
    "Time from request arrival at the ingress to its first generated token leaving it.",
    ("model", "plan"),
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
    "Time from request arrival to the last byte of the response, by endpoint, model and tenant plan.",
    ("endpoint", "model", "plan"),
)
INGRESS_TOKENS = MetricSpec(
    "glmserve_ingress_tokens_total",
    "counter",
    "Prompt (direction=input) and generated (direction=output) tokens of completed requests.",
    ("model", "direction", "plan", "tenant"),
)
INGRESS_CACHED_TOKENS = MetricSpec(
    "glmserve_ingress_cached_prompt_tokens_total",
    "counter",
    "Prompt tokens of completed requests that an engine found in its prefix cache (part of direction=input).",
    ("model", "plan"),
)
INGRESS_ROUTER_FALLBACKS = MetricSpec(
    "glmserve_ingress_router_fallbacks_total",
    "counter",
    "Requests the ingress sent without a router decision (the router was unreachable or too slow).",
    ("reason",),
)
INGRESS_MIGRATIONS = MetricSpec(
    "glmserve_ingress_migrations_total",
    "counter",
    "Requests whose engine died, failed or stalled: moved to another replica (outcome=moved), or ended "
    "with an error because they could not move (outcome=refused: limit reached, tool call or grammar cut).",
    ("model", "outcome"),
)
INGRESS_IN_FLIGHT = MetricSpec(
    "glmserve_ingress_requests_in_flight",
    "gauge",
    "Requests the ingress is currently serving.",
    ("model", "plan"),
)
INGRESS_WAITING = MetricSpec(
    "glmserve_ingress_requests_waiting",
    "gauge",
    "Admitted requests waiting in the ingress for an engine slot, by model and plan priority class "
    "(while a higher class is active, lower ones fill only their share of the slots).",
    ("model", "priority"),
)
INGRESS_SHARE_SCALE = MetricSpec(
    "glmserve_ingress_lower_priority_share_scale",
    "gauge",
    "The factor on the slot share of lower priority classes while a higher one is active: 1 while the "
    "engines keep their uncontended pace, less while lower classes slow them (AIMD on inter-token latency).",
    ("model",),
)
INGRESS_REMOTE_PREFILL = MetricSpec(
    "glmserve_ingress_remote_prefill_duration_seconds",
    "histogram",
    "Disaggregated mode: time the prefill pool took to compute a prompt's KV cache, seen from the ingress.",
    ("model",),
)
INGRESS_PREFILL_FALLBACKS = MetricSpec(
    "glmserve_ingress_prefill_fallbacks_total",
    "counter",
    "Disaggregated mode: requests decoded with local prefill because remote prefill failed, by reason "
    "(error: the call failed; engine_error: the prefill engine answered an error; no_kv_params: it "
    "returned no KV to transfer).",
    ("model", "reason"),
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
# The pools' scaling signals as the router holds them: current (refreshed every second) and 0 when
# idle, where the engines' own gauges, re-exported by Ray, lag ~10 s and vanish ~20 s after the last
# request. A pool whose replicas all left keeps reading 0.
ROUTER_POOL_REQUESTS = MetricSpec(
    "glmserve_router_pool_requests",
    "gauge",
    "Requests of a pool by state: running and waiting in its engines (their heartbeats), queued in the "
    "router's flow control for a free slot (decode pool: every request needs one there).",
    ("model", "role", "state"),
)
ROUTER_POOL_PROMPT_TOKENS = MetricSpec(
    "glmserve_router_pool_uncached_prompt_tokens",
    "gauge",
    "Uncached prompt tokens routed to a pool's engines and not prefilled yet: the prefill work they owe.",
    ("model", "role"),
)
ROUTER_POOL_REPLICAS = MetricSpec(
    "glmserve_router_pool_replicas",
    "gauge",
    "A pool's replicas that the router routes to (registered, heartbeats current): its actual size, 0 "
    "once its replicas all left; compare ray_serve_autoscaling_desired_replicas.",
    ("model", "role"),
)
ROUTER_POOL_KV_CACHE_USAGE = MetricSpec(
    "glmserve_router_pool_kv_cache_usage",
    "gauge",
    "KV cache in use in a pool's engines (0-1, their heartbeats), mean over its replicas the router routes "
    "to; 0 when idle or empty (vLLM's own gauge leaves Ray's export once an engine is idle).",
    ("model", "role"),
)
# What losing one engine replica would cost, for the scale-down that picks the cheapest
# (glmserve.serving.scale_down): a series per registered worker, removed when it leaves.
ROUTER_WORKER_REQUESTS = MetricSpec(
    "glmserve_router_worker_requests",
    "gauge",
    "Requests running and waiting in one engine replica (its heartbeats), by model, role and worker "
    "(the Serve replica's id).",
    ("model", "role", "worker"),
)
ROUTER_WORKER_CACHED_BLOCKS = MetricSpec(
    "glmserve_router_worker_cached_blocks",
    "gauge",
    "KV blocks the router's index holds for one engine replica (its cached prefixes), by model, role and worker.",
    ("model", "role", "worker"),
)
ROUTER_COLD_START = MetricSpec(
    "glmserve_router_cold_start_seconds",
    "histogram",
    "Scale from zero: from the first request that found a model's decode pool empty to the first "
    "replica registering with the router (flow.scale_from_zero models).",
    ("model",),
    (5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1200.0),
    only_with="scale from zero",
)
ROUTER_LAST_COLD_START = MetricSpec(
    "glmserve_router_last_cold_start_seconds",
    "gauge",
    "The latest of glmserve_router_cold_start_seconds per model (absent before the first): what the "
    "operator shows in the ModelDeployment's status.",
    ("model",),
    only_with="scale from zero",
)
ROUTER_IN_FLIGHT = MetricSpec(
    "glmserve_router_requests_in_flight",
    "gauge",
    "Requests routed by this router whose completion it has not been told yet.",
)

ROUTER_FLOW_QUEUED = MetricSpec(
    "glmserve_router_flow_queued_requests",
    "gauge",
    "Requests waiting in the router's flow control for an engine slot, by model, plan priority class and "
    'tenant (tenant="other" unless listed in the router\'s flow.metrics_tenants).',
    ("model", "priority", "tenant"),
)
ROUTER_FLOW_WAIT = MetricSpec(
    "glmserve_router_flow_wait_seconds",
    "histogram",
    "Time a request waited in the router's flow control before it was routed (0: a slot was free), "
    "by model and plan priority class.",
    ("model", "priority"),
)
ROUTER_FLOW_TENANT_WAIT = MetricSpec(
    "glmserve_router_flow_tenant_wait_seconds_total",
    "counter",
    "Seconds requests waited in the router's flow control before they were routed, summed per model, plan "
    'priority class and tenant (tenant="other" unless listed in flow.metrics_tenants); divide by '
    "glmserve_router_flow_dispatched_total for the mean wait.",
    ("model", "priority", "tenant"),
)
ROUTER_FLOW_DISPATCHED = MetricSpec(
    "glmserve_router_flow_dispatched_total",
    "counter",
    "Requests the router's flow control let through to routing, by model, plan priority class and tenant.",
    ("model", "priority", "tenant"),
)
ROUTER_FLOW_SHED = MetricSpec(
    "glmserve_router_flow_shed_total",
    "counter",
    "Requests the router's flow control refused with 503 + Retry-After, by model, plan priority class, "
    "tenant and reason (queue_full: displaced or refused by a full queue; ttl: waited past queue_ttl_s).",
    ("model", "priority", "tenant", "reason"),
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


# vLLM's engine metrics as Ray re-exports them: `vllm:x` becomes `ray_vllm_x`, labelled with the
# Serve replica (ReplicaId), model_name and engine. vLLM names no pool: dashboards and alerts
# join on Ray Serve's replica health, which names each replica's deployment (Prefill:, Decode:
# or Engine: + model). Counters appear once they first move.
VLLM_REQUESTS_RUNNING = MetricSpec("ray_vllm_num_requests_running", "gauge", "Requests in the engine's batch.")
VLLM_REQUESTS_WAITING = MetricSpec("ray_vllm_num_requests_waiting", "gauge", "Requests queued in the engine.")
VLLM_KV_CACHE_USAGE = MetricSpec("ray_vllm_kv_cache_usage_perc", "gauge", "KV cache in use, 0-1.")
VLLM_PREFIX_CACHE_QUERIES = MetricSpec(
    "ray_vllm_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache."
)
VLLM_PREFIX_CACHE_HITS = MetricSpec(
    "ray_vllm_prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache."
)
VLLM_PROMPT_TOKENS_BY_SOURCE = MetricSpec(
    "ray_vllm_prompt_tokens_by_source_total",
    "counter",
    "Prompt tokens by where their KV came from (local_compute, local_cache_hit, external_kv_transfer).",
    ("source",),
)
VLLM_GENERATION_TOKENS = MetricSpec("ray_vllm_generation_tokens_total", "counter", "Generated tokens.")
VLLM_ITERATION_TOKENS = MetricSpec(
    # vLLM's name: a histogram of tokens per engine step, despite `_total`.
    "ray_vllm_iteration_tokens_total",
    "histogram",
    "Tokens (prompt and generated) processed per engine step.",
)
VLLM_QUEUE_TIME = MetricSpec("ray_vllm_request_queue_time_seconds", "histogram", "Time requests waited.")
VLLM_PREFILL_TIME = MetricSpec("ray_vllm_request_prefill_time_seconds", "histogram", "Time in prefill.")
VLLM_DECODE_TIME = MetricSpec("ray_vllm_request_decode_time_seconds", "histogram", "Time in decode.")
VLLM_KV_TRANSFER_TIME = MetricSpec(
    "ray_vllm_nixl_xfer_time_seconds", "histogram", "Decode engines: time of one NIXL KV transfer."
)
VLLM_KV_TRANSFER_BYTES = MetricSpec(
    "ray_vllm_nixl_bytes_transferred", "histogram", "Decode engines: bytes of one NIXL KV transfer."
)
# Ray Serve's controller: one series per replica, naming its deployment (and so its pool).
SERVE_REPLICA_HEALTHY = MetricSpec(
    "ray_serve_deployment_replica_healthy",
    "gauge",
    "1 while a Serve replica passes its health check.",
    ("application", "deployment", "replica"),
)

# Serve's controller sets it on every autoscaling decision (each control-loop tick of an
# autoscaling application), so it stays current while idle, unlike its target_replicas gauge, set
# only on change and dropped by Ray's export after a while.
SERVE_DESIRED_REPLICAS = MetricSpec(
    "ray_serve_autoscaling_desired_replicas",
    "gauge",
    "The replicas an autoscaling policy (glmserve's, per pool) asks for, before Serve applies the bounds.",
    ("application", "deployment"),
    only_with="autoscaling",
)
SERVE_REPLICA_STARTUP = MetricSpec(
    "ray_serve_replica_startup_latency_ms",
    "histogram",
    "A replica's cold start: from its creation to ready (an engine's includes loading the weights), ms.",
    ("application", "deployment"),
)

_COMPONENTS: dict[str, Component] = {
    "glmserve_ingress_": "ingress",
    "glmserve_router_": "router",
    "glmserve_admission_": "limits",
    "glmserve_auth_": "limits",
    "ray_vllm_": "engine",
    "ray_serve_": "serve",
}


def component(spec: MetricSpec) -> Component:
    """Which part of the platform exports a metric: its name's prefix says."""
    return next(c for prefix, c in _COMPONENTS.items() if spec.name.startswith(prefix))


def all_specs() -> list[MetricSpec]:
    return [value for value in globals().values() if isinstance(value, MetricSpec)]


def _owned(spec: MetricSpec, kind: Kind) -> None:
    assert spec.kind == kind, spec.name
    assert spec.name.startswith("glmserve_"), f"{spec.name} is exported by {component(spec)}, not by glmserve"


def counter(spec: MetricSpec, registry: CollectorRegistry) -> Counter:
    _owned(spec, "counter")
    # prometheus_client appends `_total` itself.
    return Counter(spec.name.removesuffix("_total"), spec.help, spec.labels, registry=registry)


def gauge(spec: MetricSpec, registry: CollectorRegistry) -> Gauge:
    _owned(spec, "gauge")
    return Gauge(spec.name, spec.help, spec.labels, registry=registry)


def histogram(spec: MetricSpec, registry: CollectorRegistry) -> Histogram:
    _owned(spec, "histogram")
    return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
