"""Serve's request router for glmserve: the router's pick, else the replicas a moved request has
not failed on (and the one picked written on its body, for the ingress to avoid next)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from ray.serve.request_router import PendingRequest

from glmserve.serving.ingress.engine_request import EngineChatRequest
from glmserve.serving.routing.pinned import PinnedRouter


def _replicas(*names: str) -> list[Any]:
    return [SimpleNamespace(replica_id=SimpleNamespace(unique_id=name)) for name in names]


def _choose(body: EngineChatRequest, replicas: list[Any]) -> list[list[Any]]:
    async def choose() -> list[list[Any]]:
        pending = PendingRequest(args=[body], kwargs={}, metadata=None)  # type: ignore[arg-type]
        return await PinnedRouter.__new__(PinnedRouter).choose_replicas(replicas, pending)

    return asyncio.run(choose())


def test_a_moved_request_goes_to_a_replica_it_has_not_failed_on() -> None:
    for _ in range(10):
        body = EngineChatRequest.model_construct(glmserve_target=None, glmserve_avoid=("a", "b"))
        [[chosen]] = _choose(body, _replicas("a", "b", "c"))
        assert chosen.replica_id.unique_id == "c" == body.glmserve_target


def test_when_every_replica_failed_it_any_will_do() -> None:
    body = EngineChatRequest.model_construct(glmserve_target=None, glmserve_avoid=("a", "b"))
    [[chosen]] = _choose(body, _replicas("a", "b"))
    assert body.glmserve_target == chosen.replica_id.unique_id in ("a", "b")


def test_the_routers_pick_wins_and_otherwise_two_candidates() -> None:
    pinned = EngineChatRequest.model_construct(glmserve_target="b", glmserve_avoid=())
    assert [[r.replica_id.unique_id for r in group] for group in _choose(pinned, _replicas("a", "b"))] == [["b"]]
    free = EngineChatRequest.model_construct(glmserve_target=None, glmserve_avoid=())
    [candidates] = _choose(free, _replicas("a", "b", "c"))
    assert len(candidates) == 2 and free.glmserve_target is None


def test_the_replica_that_took_a_call_is_written_on_its_body() -> None:
    """The ingress then knows which replica failed a request also when Serve chose it."""
    body = EngineChatRequest.model_construct(glmserve_target=None, glmserve_avoid=())

    async def route() -> None:
        pending = PendingRequest(args=[body], kwargs={}, metadata=None)  # type: ignore[arg-type]
        [replica] = _replicas("b")
        PinnedRouter.__new__(PinnedRouter).on_request_routed(pending, replica.replica_id, None)  # type: ignore[arg-type]

    asyncio.run(route())
    assert body.glmserve_target == "b"
