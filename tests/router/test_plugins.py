"""Each routing plugin alone, on hand-built workers and index."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from glmserve.router.config import RouterConfig
from glmserve.router.estimates import EngineEvents
from glmserve.router.hashing import BlockHasher
from glmserve.router.index import KVIndex
from glmserve.router.plugins.base import PluginArgs, RouteContext
from glmserve.router.plugins.registry import FILTERS, PICKERS, SCORERS
from glmserve.router.types import Load, RouteQuery, WorkerInfo
from glmserve.router.workers import Registry, Worker

PROMPT = np.arange(100, dtype=np.uint32)  # 6 full blocks of 16


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def setup(
    specs: list[dict[str, Any]], query: dict[str, Any] | None = None, index: KVIndex | None = None, **config: Any
) -> tuple[RouteContext, list[Worker]]:
    """A context over hand-made workers; cached prefixes come from `index` (the precise source)."""
    clock = Clock()
    cfg = RouterConfig.model_validate(config)
    registry = Registry(lease_s=5, forget_after_s=60, clock=clock)
    index = index or KVIndex()
    for spec in specs:
        info = WorkerInfo(
            spec["id"], spec.get("role", "decode"), spec.get("model", "m"), block_size=16, max_running_requests=10
        )
        registry.register(info, spec.get("load", Load()))
        index.attach(info.worker_id)
    fields = {"request_id": "req-1", "tenant": "t", "model": "m", "tokens": PROMPT} | (query or {})
    ctx = RouteContext(RouteQuery(**fields), clock.now, cfg, registry, BlockHasher(), EngineEvents(index, expect_s=0))
    return ctx, list(registry.workers.values())


def ids(workers: list[Worker]) -> list[str]:
    return [w.worker_id for w in workers]


def plugin(table: dict[str, Any], name: str, ctx: RouteContext, role: str = "decode") -> Any:
    return table[name](PluginArgs(ctx.config, role))


def test_allowed_filter() -> None:
    ctx, workers = setup([{"id": "a"}, {"id": "b"}], {"allowed_worker_ids": frozenset({"b"})})
    assert ids(plugin(FILTERS, "allowed", ctx)(ctx, workers)) == ["b"]
    ctx, workers = setup([{"id": "a"}, {"id": "b"}])
    assert ids(plugin(FILTERS, "allowed", ctx)(ctx, workers)) == ["a", "b"]


def test_healthy_filter_drops_expired_leases() -> None:
    ctx, workers = setup([{"id": "a"}, {"id": "b"}])
    workers[0].last_seen -= 6  # past the 5 s lease
    assert ids(plugin(FILTERS, "healthy", ctx)(ctx, workers)) == ["b"]


def test_model_and_role_filters() -> None:
    ctx, workers = setup([{"id": "a", "model": "x"}, {"id": "b"}, {"id": "c", "role": "prefill"}])
    assert ids(plugin(FILTERS, "model", ctx)(ctx, workers)) == ["b", "c"]
    assert ids(plugin(FILTERS, "role", ctx, "prefill")(ctx, workers)) == ["c"]


@pytest.mark.parametrize(("priority", "kept"), [("batch", ["idle"]), ("standard", ["idle", "nine"])])
def test_not_overloaded_filter_depends_on_priority(priority: str, kept: list[str]) -> None:
    # limits: batch 0.8, standard 0.95 of max_running_requests=10
    specs = [
        {"id": "idle"},
        {"id": "nine", "load": Load(running=8, waiting=1)},
        {"id": "full", "load": Load(running=10)},
        {"id": "kv-full", "load": Load(kv_cache_usage=0.99)},
    ]
    ctx, workers = setup(specs, {"priority": priority})
    assert ids(plugin(FILTERS, "not-overloaded", ctx)(ctx, workers)) == kept


def test_not_overloaded_counts_the_routers_own_in_flight_requests() -> None:
    ctx, workers = setup([{"id": "a"}])
    workers[0].in_flight = 10
    assert plugin(FILTERS, "not-overloaded", ctx)(ctx, workers) == []


def test_prefix_cache_scorer_is_the_cached_share_of_full_blocks() -> None:
    index = KVIndex()
    ctx, workers = setup([{"id": "a"}, {"id": "b"}, {"id": "c"}], index=index)
    hashes = [h for run in ctx.block_hashes(16) for h in run]
    index.store("a", hashes)
    index.store("b", hashes[:3])
    assert plugin(SCORERS, "prefix-cache", ctx)(ctx, workers).tolist() == [1.0, 0.5, 0.0]


def test_prefill_work_scorer_weighs_uncached_tokens_against_backlog() -> None:
    index = KVIndex()
    ctx, workers = setup([{"id": "a"}, {"id": "b"}, {"id": "c"}], index=index, scoring={"prefill_work_floor_tokens": 4})
    index.store("a", [h for run in ctx.block_hashes(16) for h in run])  # 96 of 100 tokens cached: 4 to prefill
    workers[0].prefill_backlog = 92  # ...behind 92 queued: 96 in all
    workers[2].prefill_backlog = 100  # c: 200
    # b: 100 uncached, nothing queued. Score (best + floor) / (cost + floor), best = a's 96.
    assert plugin(SCORERS, "prefill-work", ctx)(ctx, workers).tolist() == [1.0, 100 / 104, 100 / 204]


def test_load_and_kv_scorers() -> None:
    specs = [{"id": "a", "load": Load(running=5, kv_cache_usage=0.25)}, {"id": "b", "load": Load(running=20)}]
    ctx, workers = setup(specs)
    assert plugin(SCORERS, "load", ctx)(ctx, workers).tolist() == [0.5, 0.0]
    assert plugin(SCORERS, "kv-cache-utilization", ctx)(ctx, workers).tolist() == [0.75, 1.0]


def test_max_score_picker_breaks_ties_by_request_not_by_call() -> None:
    ctx, workers = setup([{"id": f"w{i}"} for i in range(8)])
    picker = plugin(PICKERS, "max-score", ctx)
    assert picker(ctx, workers, np.array([0.1] * 7 + [0.9])) == 7
    picks = set()
    for n in range(40):
        ctx, _ = setup([{"id": f"w{i}"} for i in range(8)], {"request_id": f"r{n}"})
        first = picker(ctx, workers, np.ones(8))
        ctx, _ = setup([{"id": f"w{i}"} for i in range(8)], {"request_id": f"r{n}"})
        assert picker(ctx, workers, np.ones(8)) == first  # same request, same seed: same pick
        picks.add(first)
    assert len(picks) > 4  # ...but ties spread over the workers


def test_round_robin_picker_cycles() -> None:
    ctx, workers = setup([{"id": "a"}, {"id": "b"}, {"id": "c"}])
    picker = plugin(PICKERS, "round-robin", ctx)
    assert [picker(ctx, workers, np.array([0.0, 9.0, 0.0])) for _ in range(4)] == [0, 1, 2, 0]
