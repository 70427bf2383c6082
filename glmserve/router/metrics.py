"""The router's Prometheus metrics (names in glmserve.common.metrics)."""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Histogram

from glmserve.common import metrics as m

GapOutcome = Literal["replayed", "lost", "engine_restart"]


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.routes = m.counter(m.ROUTER_ROUTES, self.registry)
        self.route_duration = m.histogram(m.ROUTER_ROUTE_DURATION, self.registry)
        self.plugin_duration = m.histogram(m.ROUTER_PLUGIN_DURATION, self.registry)
        self.prompt_tokens = m.counter(m.ROUTER_PROMPT_TOKENS, self.registry)
        self.completed_tokens = m.counter(m.ROUTER_COMPLETED_TOKENS, self.registry)
        self.kv_events = m.counter(m.ROUTER_KV_EVENTS, self.registry)
        self.kv_event_gaps = m.counter(m.ROUTER_KV_EVENT_GAPS, self.registry)
        # Each outcome reads 0, not nothing, before its first gap: dashboards and alerts rate() them.
        for outcome in get_args(GapOutcome):
            self.kv_event_gaps.labels(outcome)
        self.index_blocks = m.gauge(m.ROUTER_INDEX_BLOCKS, self.registry)
        self.workers = m.gauge(m.ROUTER_WORKERS, self.registry)
        self.in_flight = m.gauge(m.ROUTER_IN_FLIGHT, self.registry)
        self.pool_requests = m.gauge(m.ROUTER_POOL_REQUESTS, self.registry)
        self.pool_prompt_tokens = m.gauge(m.ROUTER_POOL_PROMPT_TOKENS, self.registry)
        self.pool_replicas = m.gauge(m.ROUTER_POOL_REPLICAS, self.registry)
        self.pool_kv_cache_usage = m.gauge(m.ROUTER_POOL_KV_CACHE_USAGE, self.registry)
        self.cold_start = m.histogram(m.ROUTER_COLD_START, self.registry)
        self.last_cold_start = m.gauge(m.ROUTER_LAST_COLD_START, self.registry)
        self.worker_requests = m.gauge(m.ROUTER_WORKER_REQUESTS, self.registry)
        self.worker_cached_blocks = m.gauge(m.ROUTER_WORKER_CACHED_BLOCKS, self.registry)

    def plugin_timer(self, profile: str, kind: str, plugin: str) -> Histogram:
        """The plugin's histogram child, bound once so each request pays no label lookup."""
        return self.plugin_duration.labels(profile, kind, plugin)
