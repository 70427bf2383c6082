"""Pruning a large pool: the decision scores the longest prefix holders and the least loaded, and
decides as scoring the whole pool would."""

from __future__ import annotations

from typing import Any

import numpy as np

from glmserve.router.config import RouterConfig
from glmserve.router.router import Router
from glmserve.router.types import Load, RouteQuery, Usage, WorkerInfo

POOL = 200  # workers; pruning starts above candidates.exhaustive_up_to (64)


def make_router(**config: Any) -> Router:
    router = Router(RouterConfig.model_validate({"events": {"expect_s": 0}} | config))
    for i in range(POOL):
        info = WorkerInfo(f"w{i:03d}", "prefill" if i % 10 == 9 else "decode", "m", max_running_requests=8)
        router.register(info, Load())
    return router


def prompt(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 150_000, 2048, dtype=np.uint32)


def cache(router: Router, worker_id: str, tokens: np.ndarray) -> None:
    router.index.store(worker_id, router.hasher.block_hashes(tokens, 16))


def test_the_longest_prefix_holder_wins_even_when_others_are_idler() -> None:
    router = make_router()
    p = prompt(0)
    cache(router, "w150", p)
    cache(router, "w020", p[:1024])
    router.registry.workers["w150"].in_flight = 3
    decision = router.route(RouteQuery("r", "t", "m", p))
    assert (decision.decode.worker_id, decision.expected_cached_tokens) == ("w150", 2048)


def test_a_fresh_prompt_goes_to_a_least_loaded_worker_and_never_to_the_prefill_pool() -> None:
    router = make_router()
    for worker in router.registry.workers.values():
        worker.in_flight = 0 if worker.worker_id in ("w033", "w177", "w199") else 5
    decision = router.route(RouteQuery("r", "t", "m", prompt(1)))
    assert decision.decode.worker_id in ("w033", "w177")  # w199 is a prefill worker


def test_when_every_candidate_is_filtered_out_the_whole_pool_is_tried() -> None:
    router = make_router()
    p = prompt(2)
    for i in range(20):
        cache(router, f"w{i:03d}", p)
    for worker in router.registry.workers.values():  # all full but one uncached, stale-looking worker
        worker.in_flight = 8
    router.registry.workers["w120"].in_flight = 7
    router.registry.workers["w120"].load = Load(kv_cache_usage=0.99)  # last in the least-loaded order
    router.registry.workers["w121"].load = Load(running=1)
    router.registry.workers["w121"].in_flight = 0
    decision = router.route(RouteQuery("r", "t", "m", p, priority="premium"))
    assert decision.decode.worker_id == "w121"


def test_pruned_decisions_match_scoring_the_whole_pool() -> None:
    """Each prefix is held by fewer workers than prefix_holders, so every holder is a candidate,
    and the rest differ only in load, which the least-loaded sample covers: pruning must then
    choose a worker as good as the best of the whole pool."""
    pruned, whole = make_router(), make_router(candidates={"exhaustive_up_to": 10_000})
    rng = np.random.default_rng(4)
    prompts = [prompt(10 + i) for i in range(20)]
    busy = rng.integers(0, 6, POOL).tolist()
    for router in (pruned, whole):
        for i, worker in enumerate(router.registry.workers.values()):
            worker.in_flight = busy[i]
            cache(router, worker.worker_id, prompts[i % 20][: 256 * (i % 7)])
    for n in range(60):
        p = prompts[n % 20] if n % 4 else prompt(100 + n)
        chosen = []
        for router in (pruned, whole):
            decision = router.route(RouteQuery(f"r{n}", "t", "m", p))
            worker = router.registry.workers[decision.decode.worker_id]
            chosen.append((decision.expected_cached_tokens, worker.in_flight))
            router.complete(f"r{n}", "finished", Usage())
        assert chosen[0] == chosen[1]
