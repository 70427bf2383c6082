"""Prefill/decode pools: load, queueing and latency per engine pool, and the KV transfer between them."""

from __future__ import annotations

from glmserve.common import metrics as m
from glmserve.common import slo
from glmserve.dashboards.grafana import Dashboard, Panel, Q, Target

_POOL = ("pool",)
_QUEUED = 'state="queued"'
_IN_ENGINES = 'state!="queued"'

DASHBOARD = Dashboard(
    uid="glmserve-pools",
    title="glmserve: prefill and decode pools",
    description="Per engine pool (Engine: colocated, Prefill, Decode): replicas, load, queueing, phase "
    "latencies; in disaggregated mode the NIXL KV transfer and the ingress's remote prefill.",
    panels=(
        Panel(
            "Healthy replicas by pool",
            "Engine replicas passing Ray Serve's health check.",
            "short",
            (Target(f"sum by (pool) ({Q.engine_replicas()})", "{{pool}}"),),
            (("red", None), ("green", 1.0)),
        ),
        Panel(
            "Requests running and waiting by pool",
            "In the engines' batches, and queued in front of them.",
            "short",
            (
                Target(f"sum by (pool) ({Q.pooled(Q.series(m.VLLM_REQUESTS_RUNNING))})", "{{pool}} running"),
                Target(f"sum by (pool) ({Q.pooled(Q.series(m.VLLM_REQUESTS_WAITING))})", "{{pool}} waiting"),
            ),
        ),
        Panel(
            "KV cache usage by pool (fullest replica)",
            "A pool is as full as its fullest replica: there new requests queue or preempt.",
            "percentunit",
            (Target(f"max by (pool) ({Q.pooled(Q.series(m.VLLM_KV_CACHE_USAGE))})", "{{pool}}"),),
            (("green", None), ("orange", 0.8), ("red", 0.95)),
        ),
        Panel(
            "Prompt tokens per second by source",
            "Where each pool got prompt KV: computed (local_compute), its prefix cache (local_cache_hit) "
            "or another engine (external_kv_transfer). Decode computing prompts means prefill fell back.",
            "short",
            (Target(Q.pool_rate(m.VLLM_PROMPT_TOKENS_BY_SOURCE, ("pool", "source")), "{{pool}} {{source}}"),),
        ),
        Panel(
            "Generated tokens per second by pool",
            "Output tokens each pool produced (prefill pools produce one per request).",
            "short",
            (Target(Q.pool_rate(m.VLLM_GENERATION_TOKENS, _POOL), "{{pool}}"),),
        ),
        Panel(
            "Queue time by pool (p95)",
            "Time requests waited in an engine before being scheduled.",
            "s",
            (Target(Q.pool_quantile(0.95, m.VLLM_QUEUE_TIME, _POOL), "{{pool}}"),),
            (("green", None), ("orange", 1.0), ("red", 5.0)),
        ),
        Panel(
            "Prefill and decode time by pool (p95)",
            "Engine time spent computing prompts and generating outputs.",
            "s",
            (
                Target(Q.pool_quantile(0.95, m.VLLM_PREFILL_TIME, _POOL), "{{pool}} prefill"),
                Target(Q.pool_quantile(0.95, m.VLLM_DECODE_TIME, _POOL), "{{pool}} decode"),
            ),
        ),
        Panel(
            "KV transfer throughput by decode replica",
            "Bytes per second decode replicas pulled from prefill replicas over NIXL.",
            "Bps",
            (Target(f"sum by (ReplicaId) ({Q.rate(m.VLLM_KV_TRANSFER_BYTES, suffix='_sum')})", "{{ReplicaId}}"),),
        ),
        Panel(
            "KV transfer time",
            "Duration of one NIXL transfer, at the decode replicas.",
            "s",
            tuple(Target(Q.quantile(q, m.VLLM_KV_TRANSFER_TIME), f"p{q * 100:g}") for q in (0.5, 0.95)),
            (("green", None), ("orange", 0.1), ("red", 0.5)),
        ),
        Panel(
            "Remote prefill at the ingress",
            "Time the prefill pool took to hand back a prompt's KV, as the ingress saw it.",
            "s",
            tuple(
                Target(Q.quantile(q, m.INGRESS_REMOTE_PREFILL, ("model",)), f"p{q * 100:g} {{{{model}}}}")
                for q in (0.5, 0.95)
            ),
            (("green", None), ("red", slo.TTFT_THRESHOLD_S)),
        ),
        Panel(
            "Autoscaling: desired vs actual replicas by pool",
            "Desired: what the pool's autoscaling policy asks Serve for, at every decision (before Serve's "
            "bounds). Routed: the replicas the router routes to, refreshed every second and 0 once a pool "
            "is empty; a replica leaves when Serve starts draining it. Desired above routed: replicas "
            "starting (a cold start) or no room for them.",
            "short",
            (
                Target(f"max by (pool) ({Q.serve_pools(m.SERVE_DESIRED_REPLICAS)})", "{{pool}} desired"),
                Target(f"max by (role) ({Q.series(m.ROUTER_POOL_REPLICAS)})", "{{role}} routed"),
            ),
        ),
        Panel(
            "Autoscaling: requests by pool (router, current)",
            "The scaling signals as the router holds them, 0 when idle: running and waiting in the engines, "
            "queued in the router for a slot (never reaching Serve, so its own request count misses them).",
            "short",
            (
                Target(
                    f"max by (role, state) ({Q.series(m.ROUTER_POOL_REQUESTS, _IN_ENGINES)})",
                    "{{role}} {{state}}",
                ),
                # Each router replica queues its own requests: they add up.
                Target(f"sum by (role) ({Q.series(m.ROUTER_POOL_REQUESTS, _QUEUED)})", "{{role}} queued"),
            ),
        ),
        Panel(
            "Autoscaling: uncached prompt tokens owed by pool",
            "Prompt tokens routed to a pool and not prefilled yet: prefill's scaling signal.",
            "short",
            (Target(f"sum by (role) ({Q.series(m.ROUTER_POOL_PROMPT_TOKENS)})", "{{role}}"),),
        ),
        Panel(
            "Autoscaling: cold starts by pool",
            "Time from a replica's creation to ready, weights loaded (Ray Serve), over every start since "
            "Serve's controller started: median and slowest bucket. A replica added for a burst serves "
            "only after this.",
            "ms",
            tuple(
                Target(
                    f"histogram_quantile({q}, sum by (le, pool) "
                    f"({Q.serve_pools(m.SERVE_REPLICA_STARTUP, suffix='_bucket')}))",
                    f"{{{{pool}}}} p{q * 100:g}",
                )
                for q in (0.5, 1.0)
            ),
        ),
        Panel(
            "Autoscaling: scale from zero",
            "A decode pool at minReplicas 0: how long requests waited for its first replica, from the "
            "first request that found it empty to the replica registering with the router (the latest, "
            "and the mean since the router started). The ModelDeployment's status shows the same (coldStarts).",
            "s",
            (
                Target(f"max by (model) ({Q.series(m.ROUTER_LAST_COLD_START)})", "{{model}} latest"),
                Target(
                    f"sum by (model) ({Q.series(m.ROUTER_COLD_START, suffix='_sum')}) / "
                    f"sum by (model) ({Q.series(m.ROUTER_COLD_START, suffix='_count')})",
                    "{{model}} mean",
                ),
            ),
        ),
        Panel(
            "Prefill fallbacks per second",
            "Requests decoded with local prefill because remote prefill failed, by reason.",
            "reqps",
            (Target(Q.sum_rate(m.INGRESS_PREFILL_FALLBACKS, ("model", "reason")), "{{model}} {{reason}}"),),
            (("green", None), ("red", 0.01)),
        ),
    ),
)
