"""The two sources of cached-prefix estimates: the engines' events (precise) and the router's own
routing history (approximate)."""

from __future__ import annotations

import numpy as np

from glmserve.router.config import ApproximateConfig, RouterConfig
from glmserve.router.estimates import EngineEvents, RoutingHistory
from glmserve.router.hashing import BlockHasher
from glmserve.router.index import KVIndex
from glmserve.router.plugins.base import PrefixEstimate, RouteContext
from glmserve.router.types import Load, RouteQuery, WorkerInfo
from glmserve.router.workers import Registry, Worker

PROMPT = np.arange(100, dtype=np.uint32)


def context(
    estimate: PrefixEstimate, tokens: np.ndarray = PROMPT, request_id: str = "r1", now: float = 0.0
) -> tuple[RouteContext, list[Worker]]:
    registry = Registry(lease_s=5, forget_after_s=60, clock=lambda: 0.0)
    for worker_id, block_size in (("a", 16), ("b", 32)):
        registry.register(WorkerInfo(worker_id, "decode", "m", block_size=block_size), Load())
    query = RouteQuery(request_id, "t", "m", tokens)
    ctx = RouteContext(query, now, RouterConfig(), registry, BlockHasher(), estimate)
    return ctx, list(registry.workers.values())


def test_engine_events_hash_at_each_workers_block_size() -> None:
    index = KVIndex()
    for w in ("a", "b"):
        index.attach(w)
    ctx, workers = context(EngineEvents(index, expect_s=0))
    index.store("a", [h for run in ctx.block_hashes(16) for h in run][:5])  # 80 tokens in 16-token blocks
    index.store("b", [h for run in ctx.block_hashes(32) for h in run][:2])  # 64 tokens in 32-token blocks
    index.store("b", [h for run in ctx.block_hashes(16) for h in run])  # b's block size is 32: these are not its blocks
    assert ctx.cached_tokens(workers) == [80, 64]


def test_a_routed_prompt_counts_as_cached_until_its_deadline() -> None:
    """Requests sharing a prefix follow it while its first request is still prefilling."""
    index = KVIndex()
    for w in ("a", "b"):
        index.attach(w)
    events = EngineEvents(index, expect_s=10)
    ctx, workers = context(events)
    assert ctx.cached_tokens(workers) == [0, 0]
    events.routed(ctx, workers[0])
    ctx, workers = context(events, request_id="r2", now=9.0)
    assert ctx.cached_tokens(workers) == [96, 0]  # a's six full 16-token blocks
    index.store("a", [h for run in ctx.block_hashes(16) for h in run][:2])  # the engine reports two
    ctx, workers = context(events, request_id="r3", now=10.0)
    assert ctx.cached_tokens(workers) == [32, 0]  # past the deadline only reported blocks count


def test_an_evicted_block_is_no_longer_expected() -> None:
    index = KVIndex()
    for w in ("a", "b"):
        index.attach(w)
    events = EngineEvents(index, expect_s=10)
    ctx, workers = context(events)
    events.routed(ctx, workers[0])
    third = [h for run in ctx.block_hashes(16) for h in run][2]
    index.remove("a", [third])
    ctx, workers = context(events, request_id="r2", now=1.0)
    assert ctx.cached_tokens(workers) == [32, 0]


def test_routing_history_learns_from_routed_requests_only() -> None:
    history = RoutingHistory(ApproximateConfig(chunk_tokens=10, capacity_chunks=100))
    ctx, workers = context(history)
    assert ctx.cached_tokens(workers) == [0, 0]
    history.routed(ctx, workers[1])
    ctx, workers = context(history, np.concatenate([PROMPT, PROMPT]), "r2")
    assert ctx.cached_tokens(workers) == [0, 100]  # the first 100 tokens, in chunks of 10


def test_routing_history_forgets_past_its_capacity() -> None:
    history = RoutingHistory(ApproximateConfig(chunk_tokens=10, capacity_chunks=5))
    ctx, workers = context(history)
    history.routed(ctx, workers[0])  # 10 chunks into an LRU of 5: the first ones are gone
    ctx, workers = context(history, request_id="r2")
    assert ctx.cached_tokens(workers) == [0, 0]


def test_routing_history_keeps_salts_apart() -> None:
    history = RoutingHistory(ApproximateConfig(chunk_tokens=10))
    ctx, workers = context(history)
    history.routed(ctx, workers[0])
    salted = RouteContext(
        RouteQuery("r2", "t", "m", PROMPT, cache_salt="s"), 0.0, RouterConfig(), ctx.registry, ctx.hasher, history
    )
    assert salted.cached_tokens(workers) == [0, 0]
