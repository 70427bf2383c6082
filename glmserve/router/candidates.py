"""Pruning a large pool before its filters and scorers run: a decision scores the workers holding
the longest cached prefixes of the prompt (the prefix-cache scorer's best) and a bounded number of
the least loaded ones (the load scorers' best, and where a fresh prompt goes), chosen with array
operations over the pool, so its cost stays flat from 64 workers to thousands.
"""

from __future__ import annotations

import numpy as np

from glmserve.router.plugins.base import PluginArgs, RouteContext
from glmserve.router.workers import Group, Worker

_TIE = 1e-9  # weight of the other figure, to break ties


class Candidates:
    def __init__(self, args: PluginArgs) -> None:
        self._cfg = args.config.candidates
        self._role = args.role
        self._default_capacity = args.config.overload.default_max_running_requests
        self._max_kv = args.config.overload.max_kv_cache_usage

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[Worker]:
        """The workers worth scoring among `workers` (every registered worker, by id)."""
        cfg = self._cfg
        if len(workers) <= cfg.exhaustive_up_to:
            return workers
        group = ctx.registry.group(ctx.query.model, self._role)
        if len(group.workers) <= cfg.exhaustive_up_to:
            return ctx.placed(group.workers, group.slots)
        chosen = {group.position[w] for w in ctx.prefix_holders(group, cfg.prefix_holders)}
        chosen.update(self._least_loaded(ctx, group).tolist())
        positions = sorted(chosen)  # in id order: replicas break ties alike
        return ctx.placed([group.workers[i] for i in positions], group.slots[positions])

    def _least_loaded(self, ctx: RouteContext, group: Group) -> np.ndarray:
        """Half of the sample by requests on the worker (the load scorer), half by the prompt
        tokens it owes (the prefill-work scorer): a worker busy decoding may still prefill first."""
        board, slots = ctx.registry.board, group.slots
        capacity = board.max_running[slots]
        capacity = np.where(capacity > 0, capacity, self._default_capacity)
        busy = board.busy(slots) / capacity
        backlog = board.backlog[slots].astype(np.float64)
        down = ~board.static[slots] & (ctx.now - board.last_seen[slots] > ctx.registry.lease_s)
        out = down | (board.kv_usage[slots] >= self._max_kv)
        allowed = ctx.query.allowed_worker_ids
        if allowed:
            listed = np.zeros(len(slots), dtype=bool)
            listed[[group.position[w] for w in allowed if w in group.position]] = True
            out |= ~listed
        k = self._cfg.least_loaded
        return np.concatenate(
            [
                _smallest(busy + _TIE * backlog, out, k - k // 2),
                _smallest(backlog + _TIE * busy, out, k // 2),
            ]
        )


def _smallest(key: np.ndarray, out: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest keys, workers marked `out` last."""
    k = min(k, len(key))
    if not k:
        return np.zeros(0, dtype=np.intp)
    key = np.where(out, np.inf, key)
    return np.argpartition(key, k - 1)[:k]
