"""The Router's decisions and accounting without gRPC: P/D decider, in-flight load, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from glmserve.common.errors import OverloadedError
from glmserve.router.config import RouterConfig
from glmserve.router.router import Router
from glmserve.router.types import Load, RouteQuery, Usage, WorkerInfo

PROMPT = np.arange(1000, dtype=np.uint32)  # 62 full blocks of 16 (992 tokens)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def make_router(workers: list[tuple[str, str]], **config: Any) -> tuple[Router, Clock]:
    clock = Clock()
    router = Router(RouterConfig.model_validate(config), clock=clock)
    for worker_id, role in workers:
        router.register(WorkerInfo(worker_id, role, "m", address=f"{worker_id}:1", max_running_requests=4), Load())
    return router, clock


def query(request_id: str = "r1", tokens: np.ndarray = PROMPT, **fields: Any) -> RouteQuery:
    return RouteQuery(request_id, "t", "m", tokens, **fields)


def cache(router: Router, worker_id: str, tokens: np.ndarray) -> None:
    router.index.store(worker_id, router.hasher.block_hashes(tokens, 16))


def test_prefix_wins_over_an_idle_worker() -> None:
    router, _ = make_router([("a", "decode"), ("b", "decode")])
    cache(router, "b", PROMPT)
    router.registry.workers["b"].in_flight = 2  # half full, still preferred for 992 cached tokens
    decision = router.route(query())
    assert (decision.decode.worker_id, decision.expected_cached_tokens, decision.prefill) == ("b", 992, None)
    assert decision.decode.address == "b:1"


def test_remote_prefill_only_when_enough_is_uncached() -> None:
    workers = [("p1", "prefill"), ("d1", "decode")]
    # Without expectations, so that only what the test caches counts.
    router, _ = make_router(workers, disaggregation={"min_remote_prefill_tokens": 500}, events={"expect_s": 0})
    decision = router.route(query("cold"))
    assert decision.prefill is not None
    assert decision.prefill.worker_id == "p1"
    assert "remote prefill: 1000 uncached" in decision.reasons[1]
    cache(router, "d1", PROMPT[:600])  # 592 cached on decode, 408 uncached < 500
    decision = router.route(query("warm"))
    assert decision.prefill is None
    assert decision.expected_cached_tokens == 592
    assert decision.reasons[1] == "local prefill: 408 uncached tokens < 500"


def test_no_prefill_pool_means_local_prefill() -> None:
    router, _ = make_router([("d1", "decode")], disaggregation={"min_remote_prefill_tokens": 0})
    decision = router.route(query())
    assert decision.prefill is None
    assert decision.reasons[1] == "local prefill: no prefill pool"


def test_prefill_done_releases_only_the_prefill_worker() -> None:
    router, _ = make_router([("p1", "prefill"), ("d1", "decode")], disaggregation={"min_remote_prefill_tokens": 0})
    router.route(query())
    workers = router.registry.workers
    assert (workers["p1"].in_flight, workers["d1"].in_flight) == (1, 1)
    assert router.complete("r1", "prefill_done", Usage())
    assert (workers["p1"].in_flight, workers["d1"].in_flight) == (0, 1)
    assert router.complete("r1", "finished", Usage(1000, 992, 10))
    assert (workers["p1"].in_flight, workers["d1"].in_flight) == (0, 0)
    assert not router.complete("r1", "finished", Usage())  # already released: not counted twice


def test_rerouting_a_request_moves_its_load() -> None:
    router, _ = make_router([("a", "decode"), ("b", "decode")])
    first = router.route(query(allowed_worker_ids=frozenset({"a"})))
    second = router.route(query(allowed_worker_ids=frozenset({"b"})))
    assert (first.decode.worker_id, second.decode.worker_id) == ("a", "b")
    assert (router.registry.workers["a"].in_flight, router.registry.workers["b"].in_flight) == (0, 1)


def test_full_workers_are_overloaded_and_unknown_models_have_no_endpoints() -> None:
    router, _ = make_router([("a", "decode")])  # max_running_requests 4
    for n in range(4):  # limits: batch 0.8 x 4 = 3.2, standard 3.8, critical 4
        router.route(query(f"r{n}", priority="batch" if n < 3 else "standard"))
    for priority in ("batch", "standard", "critical"):
        with pytest.raises(OverloadedError) as full:
            router.route(query("r4", priority=priority))
        assert full.value.code == "overloaded"
    router.complete("r0", "finished", Usage())  # 3 busy: standard fits again
    assert router.route(query("r4", priority="standard")).decode.worker_id == "a"
    with pytest.raises(OverloadedError):
        router.route(query("r5", priority="batch"))
    with pytest.raises(OverloadedError) as unknown:
        router.route(RouteQuery("x", "t", "other-model", PROMPT))
    assert unknown.value.code == "no_endpoints"


def test_sweep_forgets_silent_workers_and_stale_requests() -> None:
    router, clock = make_router([("a", "decode"), ("b", "decode")], request_ttl_s=100)
    cache(router, "a", PROMPT)
    router.route(query())
    clock.now = 30.0
    router.heartbeat("b", Load())
    clock.now = 61.0  # a silent for 61 s > forget_after_s 60; b for 31 s
    assert router.sweep() == ["a"]
    assert router.index.size() == 0
    assert list(router.registry.workers) == ["b"]
    router.heartbeat("b", Load())
    router.route(query("r2"))
    assert router.registry.workers["b"].in_flight == 1
    clock.now = 170.0  # r2 was routed at 61 with a 100 s TTL
    router.heartbeat("b", Load())
    router.sweep()
    assert router.registry.workers["b"].in_flight == 0


def test_reregistering_the_same_spec_keeps_the_index() -> None:
    router, _ = make_router([("a", "decode")])
    cache(router, "a", PROMPT)
    info = router.registry.workers["a"].info
    assert not router.register(info, Load(running=1))
    assert router.index.blocks("a") == 62
    assert router.register(WorkerInfo("a", "decode", "m", kv_events_endpoint="tcp://x:1"), Load())
    assert router.index.blocks("a") == 0


def test_prefill_backlog_lasts_until_the_first_token() -> None:
    router, _ = make_router([("a", "decode")])
    cache(router, "a", PROMPT[:320])  # 320 of 1000 cached: 680 to prefill
    router.route(query("r1"))
    router.route(query("r2", tokens=PROMPT[:100]))  # its 6 full blocks are cached: 4 tokens to prefill
    a = router.registry.workers["a"]
    assert a.prefill_backlog == 680 + 4
    router.complete("r1", "prefill_done", Usage())
    assert (a.prefill_backlog, a.in_flight) == (4, 2)
    router.complete("r2", "finished", Usage())  # a request that ends without a first-token report
    assert (a.prefill_backlog, a.in_flight) == (0, 1)


def test_approximate_policy_ignores_events_and_learns_from_its_own_routing() -> None:
    router, _ = make_router([("a", "decode"), ("b", "decode")], policy="approximate")
    cache(router, "b", PROMPT)  # the index knows, the approximate policy does not look
    first = router.route(query("r1"))
    assert first.expected_cached_tokens == 0
    second = router.route(query("r2"))
    assert (second.decode.worker_id, second.expected_cached_tokens) == (first.decode.worker_id, 960)  # 15 chunks of 64
