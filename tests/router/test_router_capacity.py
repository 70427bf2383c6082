"""The Router as flow control's capacity: its share of the engines' slots, and the events that
free them (complete, register, heartbeat, sweep), with one and two router replicas."""

from __future__ import annotations

import asyncio

import pytest

from glmserve.router.config import RouterConfig
from glmserve.router.router import Router
from glmserve.router.types import Load, WorkerInfo
from tests.router.flow.conftest import admit, finish, make_router, settle, ticket


def replica(replicas: int, clock: list[float]) -> Router:
    config = RouterConfig.model_validate({"flow": {"replicas": replicas}, "request_ttl_s": 10})
    router = Router(config, clock=lambda: clock[0])
    for worker_id in ("w0", "w1"):
        router.register(WorkerInfo(worker_id, "decode", "m", address=f"{worker_id}:1", max_running_requests=3), Load())
    return router


@pytest.mark.asyncio
async def test_two_replicas_split_the_engines_slots_and_never_hand_out_more() -> None:
    clock = [0.0]
    one, two = replica(2, clock), replica(2, clock)
    assert one.free("m") == two.free("m") == 3  # 2 workers x 3 slots, halved
    for i in range(3):
        await admit(one, ticket(f"one{i}"))
        await admit(two, ticket(f"two{i}"))
    assert one.free("m") == two.free("m") == 0
    waiting = [asyncio.create_task(admit(r, ticket(f"{name}-late"))) for r, name in ((one, "one"), (two, "two"))]
    await settle()
    assert not any(t.done() for t in waiting)
    in_flight = sum(w.in_flight for r in (one, two) for w in r.registry.workers.values())
    assert in_flight == 6  # the engines' 6 slots, none oversubscribed
    finish(one, "one0")  # frees a slot of replica one only
    await asyncio.wait_for(waiting[0], 1)
    assert not waiting[1].done()
    finish(two, "two2")
    await asyncio.wait_for(waiting[1], 1)


def test_a_single_replica_hands_out_every_slot_and_many_replicas_one_each() -> None:
    clock = [0.0]
    assert replica(1, clock).free("m") == 6
    assert replica(4, clock).free("m") == 1  # 6 // 4
    assert replica(10, clock).free("m") == 1  # more replicas than slots: none is left without one


@pytest.mark.asyncio
async def test_a_worker_registering_frees_slots_for_the_waiters() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold"))
    waiting = asyncio.create_task(admit(router, ticket("next")))
    await settle()
    router.register(WorkerInfo("w1", "decode", "m", address="w1:1", max_running_requests=1), Load())
    decision = await asyncio.wait_for(waiting, 1)
    assert decision.decode.worker_id == "w1"


@pytest.mark.asyncio
async def test_a_heartbeat_reviving_a_silent_worker_frees_its_slots() -> None:
    clock = [0.0]
    router = replica(1, clock)
    clock[0] = 100.0  # both leases ran out: no capacity, requests wait
    waiting = asyncio.create_task(admit(router, ticket("r")))
    await settle()
    assert router.free("m") == 0 and not waiting.done()
    router.heartbeat("w0", Load())
    await asyncio.wait_for(waiting, 1)


@pytest.mark.asyncio
async def test_the_sweep_of_a_never_completed_request_frees_its_slot() -> None:
    clock = [0.0]
    worker = {"worker_id": "w0", "model": "m", "max_running_requests": 1}
    config = RouterConfig.model_validate({"workers": {"static": [worker]}, "request_ttl_s": 10})
    router = Router(config, clock=lambda: clock[0])
    await admit(router, ticket("lost"))  # its Complete never comes
    waiting = asyncio.create_task(admit(router, ticket("next")))
    await settle()
    clock[0] = 11.0
    router.sweep()
    await asyncio.wait_for(waiting, 1)


@pytest.mark.asyncio
async def test_a_model_no_worker_serves_is_routed_at_once_to_say_so() -> None:
    router = make_router(slots=1)
    assert router.free("unknown") == 1


@pytest.mark.asyncio
async def test_a_slot_freed_by_a_request_ending_is_routable_before_the_engines_next_heartbeat() -> None:
    """The last heartbeat still counts a request that just ended. Flow control hands its slot out at
    once; routing's overload filter, which reads that heartbeat, must take it (not answer 503)."""
    router = make_router(slots=2)
    for name in ("a", "b"):
        await admit(router, ticket(name))
    router.heartbeat("w0", Load(running=2))
    finish(router, "a")
    assert router.free("m") == 1
    decision = await asyncio.wait_for(admit(router, ticket("c")), 1)
    assert decision.decode.worker_id == "w0"
    assert router.free("m") == 0
    router.heartbeat("w0", Load(running=2))  # b and c: the engine's count is the truth again
    assert router.free("m") == 0
