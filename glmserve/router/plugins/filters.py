"""Filters: drop the workers that cannot take the request."""

from __future__ import annotations

import numpy as np

from glmserve.router.plugins.base import PluginArgs, RouteContext
from glmserve.router.workers import Worker


class Allowed:
    """Only the workers the caller lists (e.g. the replicas Ray Serve currently considers alive)."""

    def __init__(self, args: PluginArgs) -> None:
        pass

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[Worker]:
        allowed = ctx.query.allowed_worker_ids
        return [w for w in workers if w.worker_id in allowed] if allowed else workers


class Healthy:
    """Workers whose lease (last heartbeat) has not run out."""

    def __init__(self, args: PluginArgs) -> None:
        pass

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[Worker]:
        board, slots = ctx.registry.board, ctx.slots(workers)
        healthy = board.static[slots] | (ctx.now - board.last_seen[slots] <= ctx.registry.lease_s)
        return ctx.keep(workers, healthy)


class ModelMatch:
    def __init__(self, args: PluginArgs) -> None:
        pass

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[Worker]:
        return _same_if_all(workers, [w for w in workers if w.info.model == ctx.query.model])


class RoleMatch:
    """Workers of the profile's pool."""

    def __init__(self, args: PluginArgs) -> None:
        self._role = args.role

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[Worker]:
        return _same_if_all(workers, [w for w in workers if w.info.role == self._role])


class NotOverloaded:
    """Drops workers at their priority-dependent load limit or with a (nearly) full KV cache."""

    def __init__(self, args: PluginArgs) -> None:
        self._cfg = args.config.overload

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[Worker]:
        limit = self._cfg.load_limit.get(ctx.query.priority, 1.0)
        board, slots = ctx.registry.board, ctx.slots(workers)
        capacity = board.max_running[slots]
        capacity = np.where(capacity > 0, capacity, self._cfg.default_max_running_requests)
        fits = (board.busy(slots) < limit * capacity) & (board.kv_usage[slots] < self._cfg.max_kv_cache_usage)
        return ctx.keep(workers, fits)


def _same_if_all(workers: list[Worker], kept: list[Worker]) -> list[Worker]:
    """`workers` itself when the filter kept every one (a pruned pool's candidates are all of the
    query's model and the profile's role): what the later plugins read of that list is kept."""
    return workers if len(kept) == len(workers) else kept
