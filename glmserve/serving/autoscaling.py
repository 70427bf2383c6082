"""glmserve's per-pool scaling policy (glmserve.common.autoscaling) as Ray Serve's custom policy.

Ray 2.60's hook: a deployment's `autoscaling_config.policy` names a class
(`policy_function: "glmserve.serving.autoscaling:PoolPolicy"`) that Serve's controller builds once
from `policy_kwargs` (JSON) and calls every control-loop tick with an `AutoscalingContext`: the
replicas running and targeted, Serve's own count of requests at the deployment's handles, metrics
the replicas report (`record_autoscaling_stats`), the policy's state and the time. Serve then
applies the bounds; its own delays are set to 0 (`autoscaling_config`), since `decide` keeps them.

What the context cannot carry is the router's queue: with late binding a request waits in
glmserve's router until an engine slot frees and reaches no Serve handle, so Serve's count misses
it, and no replica holds it to report it. The signals therefore come from Prometheus through Ray's
`PrometheusQueryMixin` (Ray's hook for signals from outside Serve: a daemon thread in the
controller refreshes the queries, a read never blocks; the address is `RAY_PROMETHEUS_HOST` or the
`prometheus_address` policy kwarg): the router's per-pool gauges (requests running, waiting and
queued, prompt tokens owed, KV use; current, and 0 when idle), the rate of prompt tokens routed,
the ingress's TTFT and ITL.
Without Prometheus the policy falls back on Serve's count as the pool's running sequences and,
missing the rest, never scales down on them (missing is not idle).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ray.serve.autoscaling_policy import (
    PrometheusQueryMixin,
    PrometheusQueryResult,
    PrometheusScalar,
    PrometheusVector,
)
from ray.serve.config import AutoscalingContext

from glmserve.common.autoscaling import PoolSignals, PoolTargets, ScalingState, decide
from glmserve.common.metrics import (
    INGRESS_ITL,
    INGRESS_TTFT,
    ROUTER_POOL_KV_CACHE_USAGE,
    ROUTER_POOL_PROMPT_TOKENS,
    ROUTER_POOL_REQUESTS,
    ROUTER_PROMPT_TOKENS,
    ROUTER_WORKER_CACHED_BLOCKS,
    ROUTER_WORKER_REQUESTS,
    MetricSpec,
)
from glmserve.common.promql import Query
from glmserve.common.roles import Role, worker_role
from glmserve.serving import scale_down

POLICY = "glmserve.serving.autoscaling:PoolPolicy"
STATE_KEY = "glmserve"  # our part of Serve's policy_state (Serve keeps its own keys beside it)
WINDOW = "1m"  # short enough to follow a ramp, long enough to average a few scrapes
QUANTILE = 0.9
UNCACHED = 'cached="false"'


def queries(model: str, pool: str, role: Role) -> dict[str, str]:
    """PromQL per signal for the engines of deployment prefix `pool` (Engine, Prefill or Decode)
    of `role` serving `model`.

    The router's pool gauges are its view of the pool, labelled by the router's role (a colocated
    engine is a decode worker there). Every router replica hears every engine's heartbeats, so
    running and waiting are the same on each (max); each holds its own queue and owes the prompts it
    routed itself (sum). Requests queued in the router wait for a decode slot: they count for the
    decode (or colocated) pool only. KV use is the engines' own, from their heartbeats, averaged
    over the pool's replicas by each router (max: replicas sharding the engines see different
    ones, and the fullest decides)."""

    def scope(spec: MetricSpec) -> str:
        return f'model="{model}"' if "model" in spec.labels else ""

    q = Query(scope)
    in_pool = f'role="{worker_role(role)}"'

    def requests(state: str) -> str:
        return q.series(ROUTER_POOL_REQUESTS, in_pool, f'state="{state}"')

    def quantile(spec: MetricSpec) -> str:
        return f"histogram_quantile({QUANTILE}, sum by (le) ({q.rate(spec, suffix='_bucket', window=WINDOW)}))"

    return {
        "queued_requests": f"sum({requests('queued')}) + max({requests('waiting')})",
        "queued_prompt_tokens": f"sum({q.series(ROUTER_POOL_PROMPT_TOKENS, in_pool)})",
        "prompt_tokens_per_s": f"sum({q.rate(ROUTER_PROMPT_TOKENS, UNCACHED, window=WINDOW)})",
        "running": f"max({requests('running')})",
        "kv_cache_usage": f"max({q.series(ROUTER_POOL_KV_CACHE_USAGE, in_pool)})",
        "ttft_s": quantile(INGRESS_TTFT),
        "itl_s": quantile(INGRESS_ITL),
    }


def cost_queries(model: str, role: Role) -> tuple[str, str]:
    """PromQL for each replica's requests and cached KV blocks as the router sees them (the same on
    every router replica that owns the worker: max), by worker (the Serve replica's id)."""
    q = Query(lambda spec: f'model="{model}"')
    in_pool = f'role="{worker_role(role)}"'

    def by_worker(spec: MetricSpec) -> str:
        return f"max by (worker) ({q.series(spec, in_pool)})"

    return by_worker(ROUTER_WORKER_REQUESTS), by_worker(ROUTER_WORKER_CACHED_BLOCKS)


def costs_of(
    requests: PrometheusQueryResult | None, blocks: PrometheusQueryResult | None
) -> dict[str, scale_down.Cost]:
    """Each worker's (requests, cached blocks); none without both answers (a worker the index has
    not seen yet holds no blocks)."""
    if not isinstance(requests, PrometheusVector) or not isinstance(blocks, PrometheusVector):
        return {}
    held = {s.labels.get("worker"): s.value for s in blocks.samples}
    return {w: (s.value, held.get(w, 0.0)) for s in requests.samples if (w := s.labels.get("worker"))}


def value(result: PrometheusQueryResult | None) -> float | None:
    """A scalar, or a one-sample vector's value (every query aggregates to one); None: no data."""
    if result is None:
        return None
    if isinstance(result, PrometheusScalar):
        return result.value
    return result.samples[0].value if len(result.samples) == 1 else None


def signals_of(
    ctx: AutoscalingContext,
    results: Mapping[str, PrometheusQueryResult] | None,
    by_signal: Mapping[str, str],
) -> PoolSignals:
    """The pool's signals from Prometheus `results` (query -> result), Serve's count standing in
    for the running sequences and the handles' queue where Prometheus has none."""
    found = {name: value((results or {}).get(query)) for name, query in by_signal.items()}
    signals = PoolSignals(ready=ctx.current_num_replicas, **found)
    if signals.running is None:
        signals = replace(signals, running=max(0.0, ctx.total_num_requests - ctx.total_queued_requests))
    if signals.queued_requests is None and results is None:
        signals = replace(signals, queued_requests=ctx.total_queued_requests)
    return signals


class PoolPolicy(PrometheusQueryMixin):
    """Serve's autoscaling policy of one engine pool (`policy_kwargs`: targets, model, pool)."""

    def __init__(self, *, targets: dict[str, Any], model: str, pool: str, **kwargs: Any) -> None:
        self._targets = PoolTargets.of_wire(targets)
        self._queries = queries(model, pool, self._targets.role)
        self._costs = cost_queries(model, self._targets.role)
        super().__init__(prometheus_queries=[*self._queries.values(), *self._costs], **kwargs)
        scale_down.install()  # this runs in Serve's controller, where the replicas to stop are chosen

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        signals = signals_of(ctx, self.prometheus_results, self._queries)
        state = ScalingState.of_wire(ctx.policy_state.get(STATE_KEY, {}))
        now = ctx.current_time if ctx.current_time is not None else time.time()
        decision = decide(signals, self._targets, ctx.target_num_replicas, state, now)
        results = self.prometheus_results or {}
        scale_down.publish(ctx.deployment_id, costs_of(*(results.get(q) for q in self._costs)))
        return decision.replicas, {**ctx.policy_state, STATE_KEY: decision.state.wire()}
