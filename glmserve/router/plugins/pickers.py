"""Pickers: choose one worker from the scored candidates."""

from __future__ import annotations

import numpy as np

from glmserve.router.plugins.base import PluginArgs, RouteContext
from glmserve.router.workers import Worker

_TIE = 1e-9


class MaxScore:
    """The best score; ties are broken at random, seeded per request (replicas agree)."""

    def __init__(self, args: PluginArgs) -> None:
        pass

    def __call__(self, ctx: RouteContext, workers: list[Worker], scores: np.ndarray) -> int:
        ties = np.flatnonzero(scores >= scores.max() - _TIE).tolist()
        return int(ties[0]) if len(ties) == 1 else int(ctx.rng.choice(ties))


class RoundRobin:
    """Cycles through the candidates (ordered by worker id); ignores scores. A baseline."""

    def __init__(self, args: PluginArgs) -> None:
        self._turn = 0

    def __call__(self, ctx: RouteContext, workers: list[Worker], scores: np.ndarray) -> int:
        self._turn += 1
        return (self._turn - 1) % len(workers)
