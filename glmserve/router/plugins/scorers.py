"""Scorers: each rates every candidate in [0, 1], higher is better."""

from __future__ import annotations

from glmserve.router.plugins.base import PluginArgs, RouteContext
from glmserve.router.workers import Worker


class _Scorer:
    def __init__(self, args: PluginArgs) -> None:
        self._default_capacity = args.config.overload.default_max_running_requests
        self._floor = args.config.scoring.prefill_work_floor_tokens


class PrefixCache(_Scorer):
    """The share of the prompt's full blocks cached as a prefix on the worker: keeps a prefix's
    traffic together, so its cache stays warm."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[float]:
        cached = ctx.cached_tokens(workers)
        scores = []
        for w, tokens in zip(workers, cached, strict=True):
            full = ctx.prompt_blocks(w) * w.info.block_size
            scores.append(tokens / full if full else 0.0)
        return scores


class PrefillWork(_Scorer):
    """Time to first token, relative to the cheapest candidate (Dynamo's KV router cost): the prompt
    tokens the worker must prefill (uncached there) plus the uncached tokens of the requests routed
    to it that have not produced their first token yet. Score (best + floor) / (cost + floor): 1 for
    the cheapest, about 0.5 at twice its work; the floor keeps small differences small."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[float]:
        prompt = len(ctx.query.tokens)
        costs = [w.prefill_backlog + prompt - c for w, c in zip(workers, ctx.cached_tokens(workers), strict=True)]
        best = min(costs)
        return [(best + self._floor) / (cost + self._floor) for cost in costs]


class LoadScorer(_Scorer):
    """Free request slots: 1 when idle, 0 at max_running_requests (running + queued requests)."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[float]:
        return [max(0.0, 1.0 - w.busy() / (w.info.max_running_requests or self._default_capacity)) for w in workers]


class KVCacheUtilization(_Scorer):
    """Free KV cache: new blocks fit without evicting other tenants' prefixes."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[float]:
        return [min(1.0, max(0.0, 1.0 - w.load.kv_cache_usage)) for w in workers]
