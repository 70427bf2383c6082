"""Scorers: each rates every candidate in [0, 1], higher is better, as one array over the
candidates (their load figures are read from the registry's board by slot)."""

from __future__ import annotations

import numpy as np

from glmserve.router.plugins.base import PluginArgs, RouteContext
from glmserve.router.workers import Worker


class _Scorer:
    def __init__(self, args: PluginArgs) -> None:
        self._default_capacity = args.config.overload.default_max_running_requests
        self._floor = args.config.scoring.prefill_work_floor_tokens


class PrefixCache(_Scorer):
    """The share of the prompt's full blocks cached as a prefix on the worker: keeps a prefix's
    traffic together, so its cache stays warm."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> np.ndarray:
        cached = ctx.cached_array(workers)
        block_size = ctx.registry.board.block_size[ctx.slots(workers)]
        full = len(ctx.query.tokens) // block_size * block_size
        return np.divide(cached, full, out=np.zeros_like(cached), where=full > 0)


class PrefillWork(_Scorer):
    """Time to first token, relative to the cheapest candidate (Dynamo's KV router cost): the prompt
    tokens the worker must prefill (uncached there) plus the uncached tokens of the requests routed
    to it that have not produced their first token yet. Score (best + floor) / (cost + floor): 1 for
    the cheapest, about 0.5 at twice its work; the floor keeps small differences small."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> np.ndarray:
        cached = ctx.cached_array(workers)
        costs = ctx.registry.board.backlog[ctx.slots(workers)] + (len(ctx.query.tokens) - cached)
        return (costs.min() + self._floor) / (costs + self._floor)


class LoadScorer(_Scorer):
    """Free request slots: 1 when idle, 0 at max_running_requests (running + queued requests)."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> np.ndarray:
        board, slots = ctx.registry.board, ctx.slots(workers)
        capacity = board.max_running[slots]
        capacity = np.where(capacity > 0, capacity, self._default_capacity)
        return np.maximum(0.0, 1.0 - board.busy(slots) / capacity)


class KVCacheUtilization(_Scorer):
    """Free KV cache: new blocks fit without evicting other tenants' prefixes."""

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> np.ndarray:
        return np.clip(1.0 - ctx.registry.board.kv_usage[ctx.slots(workers)], 0.0, 1.0)
