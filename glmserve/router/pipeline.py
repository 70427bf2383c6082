"""One pool's routing profile: candidates -> filters -> weighted scorers -> picker, each plugin
timed. A large pool is pruned to its candidates first (candidates.py); filters and scorers then
see a bounded list, and scorers return arrays summed with their weights in numpy."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from glmserve.router.candidates import Candidates
from glmserve.router.config import ProfileConfig, RouterConfig
from glmserve.router.metrics import RouterMetrics
from glmserve.router.plugins.base import Filter, Picker, PluginArgs, RouteContext, Scorer
from glmserve.router.plugins.registry import FILTERS, PICKERS, SCORERS
from glmserve.router.types import Role
from glmserve.router.workers import Worker


@dataclass(frozen=True, slots=True)
class Pick:
    worker: Worker
    score: float  # the weighted sum of the scorers' scores
    parts: tuple[tuple[str, float], ...]  # each scorer's score, for the decision's reasons

    def explain(self) -> str:
        parts = ", ".join(f"{name} {score:.2f}" for name, score in self.parts)
        return f"{self.worker.worker_id} score {self.score:.2f}" + (f" ({parts})" if parts else "")


@dataclass(frozen=True, slots=True)
class Rejected:
    stage: str  # the filter that left no candidate
    before: int  # candidates it was given


class Profile:
    def __init__(self, role: Role, cfg: ProfileConfig, config: RouterConfig, metrics: RouterMetrics) -> None:
        args = PluginArgs(config, role)
        self.role = role
        self._candidates = Candidates(args)
        self._filters: list[tuple[str, Filter]] = [(n, FILTERS[n](args)) for n in cfg.filters]
        self._scorers: list[tuple[str, float, Scorer]] = [(n, w, SCORERS[n](args)) for n, w in cfg.scorers.items()]
        self._picker: Picker = PICKERS[cfg.picker](args)
        timer = metrics.plugin_timer
        self._filter_timers = [timer(role, "filter", n) for n, _ in self._filters]
        self._scorer_timers = [timer(role, "scorer", n) for n, _, _ in self._scorers]
        self._picker_timer = timer(role, "picker", cfg.picker)

    def run(self, ctx: RouteContext, workers: list[Worker]) -> Pick | Rejected:
        """Chooses among `workers` (every registered worker, in id order)."""
        candidates = self._candidates(ctx, workers)
        pick = self._choose(ctx, candidates)
        if isinstance(pick, Rejected) and candidates is not workers:  # e.g. every candidate overloaded
            pick = self._choose(ctx, workers)
        return pick

    def _choose(self, ctx: RouteContext, workers: list[Worker]) -> Pick | Rejected:
        clock = time.perf_counter
        for (name, keep), timer in zip(self._filters, self._filter_timers, strict=True):
            started = clock()
            kept = keep(ctx, workers)
            timer.observe(clock() - started)
            if not kept:
                return Rejected(name, len(workers))
            workers = kept
        totals = np.zeros(len(workers))
        parts: list[tuple[str, np.ndarray]] = []
        for (name, weight, score), timer in zip(self._scorers, self._scorer_timers, strict=True):
            started = clock()
            scores = score(ctx, workers)
            timer.observe(clock() - started)
            parts.append((name, scores))
            totals += weight * scores
        started = clock()
        chosen = self._picker(ctx, workers, totals)
        self._picker_timer.observe(clock() - started)
        return Pick(
            workers[chosen], float(totals[chosen]), tuple((name, float(scores[chosen])) for name, scores in parts)
        )
