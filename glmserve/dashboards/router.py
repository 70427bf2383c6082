"""Router & KV cache: how requests are routed, how much of their prompts the caches already hold."""

from __future__ import annotations

from glmserve.common import metrics as m
from glmserve.common.promql import share
from glmserve.dashboards.grafana import Dashboard, Panel, Q, Target, Thresholds

_HIT_THRESHOLDS: Thresholds = (("red", None), ("orange", 0.2), ("green", 0.5))

DASHBOARD = Dashboard(
    uid="glmserve-router",
    title="glmserve: router and KV cache",
    description="Routing decisions and their cost, the router's view of the engines' KV caches, and the "
    "prefix-cache hits the engines actually get.",
    panels=(
        Panel(
            "Prompt tokens served from cache",
            "Measured: share of completed requests' prompt tokens an engine found in its prefix cache.",
            "percentunit",
            (
                Target(
                    share(
                        Q.sum_rate(m.INGRESS_CACHED_TOKENS, ("model",)),
                        Q.sum_rate(m.INGRESS_TOKENS, ("model",), 'direction="input"'),
                    ),
                    "{{model}}",
                ),
            ),
            _HIT_THRESHOLDS,
        ),
        Panel(
            "Engine prefix-cache hit ratio by pool",
            "Prompt tokens found in each pool's prefix caches over tokens looked up.",
            "percentunit",
            (
                Target(
                    share(
                        Q.pool_rate(m.VLLM_PREFIX_CACHE_HITS, ("pool",)),
                        Q.pool_rate(m.VLLM_PREFIX_CACHE_QUERIES, ("pool",)),
                    ),
                    "{{pool}}",
                ),
            ),
            _HIT_THRESHOLDS,
        ),
        Panel(
            "KV cache usage by replica",
            "Share of each engine replica's KV cache in use; near 1 it preempts or queues requests.",
            "percentunit",
            (
                Target(
                    f"max by (pool, ReplicaId) ({Q.pooled(Q.series(m.VLLM_KV_CACHE_USAGE))})",
                    "{{pool}} {{ReplicaId}}",
                ),
            ),
            (("green", None), ("orange", 0.8), ("red", 0.95)),
        ),
        Panel(
            "Expected cache hit ratio",
            "Router: share of routed prompt tokens the chosen worker was expected to hold.",
            "percentunit",
            (
                Target(
                    share(
                        Q.sum_rate(m.ROUTER_PROMPT_TOKENS, ("model",), 'cached="true"'),
                        Q.sum_rate(m.ROUTER_PROMPT_TOKENS, ("model",)),
                    ),
                    "{{model}}",
                ),
            ),
            _HIT_THRESHOLDS,
        ),
        Panel(
            "Requests routed without the router",
            "Share of requests the ingress sent with Serve's own balancing because the router did not answer "
            "in time: KV-cache-aware routing is off for them.",
            "percentunit",
            (Target(f"{Q.sum_rate(m.INGRESS_ROUTER_FALLBACKS)} / {Q.sum_rate(m.INGRESS_REQUESTS)}", "without router"),),
            (("green", None), ("orange", 0.01), ("red", 0.05)),
        ),
        Panel(
            "Routing decisions per second by outcome",
            "local_prefill and remote_prefill route; no_endpoints, overloaded and invalid refuse.",
            "ops",
            (Target(Q.sum_rate(m.ROUTER_ROUTES, ("outcome",)), "{{outcome}}"),),
        ),
        Panel(
            "Routing decision latency",
            "Time the router spends on one Route call.",
            "s",
            tuple(Target(Q.quantile(q, m.ROUTER_ROUTE_DURATION), f"p{q * 100:g}") for q in (0.5, 0.99)),
            (("green", None), ("orange", 0.001), ("red", 0.005)),
        ),
        Panel(
            "Routing plugin latency (p99)",
            "Each filter, scorer and picker, per pool profile.",
            "s",
            (
                Target(
                    Q.quantile(0.99, m.ROUTER_PLUGIN_DURATION, ("profile", "kind", "plugin")),
                    "{{profile}} {{kind}} {{plugin}}",
                ),
            ),
        ),
        Panel(
            "KV index size",
            "(worker, block) entries the router's KV index holds.",
            "short",
            (Target(f"sum({Q.series(m.ROUTER_INDEX_BLOCKS)})", "blocks"),),
        ),
        Panel(
            "Workers by role and state",
            "Engine workers registered with the router.",
            "short",
            (Target(f"sum by (role, state) ({Q.series(m.ROUTER_WORKERS)})", "{{role}} {{state}}"),),
        ),
        Panel(
            "KV events per second",
            "Engine KV-cache events applied to the index, and breaks in their sequence.",
            "ops",
            (
                Target(Q.sum_rate(m.ROUTER_KV_EVENTS, ("type",)), "{{type}}"),
                Target(Q.sum_rate(m.ROUTER_KV_EVENT_GAPS, ("outcome",)), "gap {{outcome}}"),
            ),
        ),
        Panel(
            "Requests routed and not yet completed",
            "Requests the router booked on a worker whose end it has not been told.",
            "short",
            (Target(f"sum({Q.series(m.ROUTER_IN_FLIGHT)})", "in flight"),),
        ),
    ),
)
