"""The flow controller through the real Router: priority bands, TTL, shedding, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from glmserve.common.errors import OverloadedError
from glmserve.common.tenancy import PRIORITY_RANK, PriorityClass
from glmserve.router.router import Router
from glmserve.router.types import Decision
from tests.router.flow.conftest import admit, finish, make_router, settle, ticket


def sample(router: Router, name: str, **labels: str) -> float:
    return router.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.asyncio
async def test_a_free_slot_is_granted_at_once_and_the_next_waits_for_it() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("r0"))
    waiting = asyncio.create_task(admit(router, ticket("r1")))
    await settle()
    assert not waiting.done() and router.flow.queued("m") == 1
    finish(router, "r0")
    decision = await asyncio.wait_for(waiting, 1)
    assert decision.decode.worker_id == "w0" and router.flow.queued("m") == 0
    assert router.registry.workers["w0"].in_flight == 1


@pytest.mark.asyncio
async def test_bands_are_served_in_priority_order_whatever_the_arrival_order() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold"))
    order: list[str] = []

    async def wait(name: PriorityClass) -> None:
        await admit(router, ticket(name, band=PRIORITY_RANK[name]))
        order.append(name)

    tasks = []
    names: tuple[PriorityClass, ...] = ("batch", "standard", "premium", "critical")
    for name in names:
        tasks.append(asyncio.create_task(wait(name)))
        await settle()
    previous = "hold"
    for _ in tasks:
        finish(router, previous)
        await settle()
        previous = order[-1]
    assert order == ["critical", "premium", "standard", "batch"]


@pytest.mark.asyncio
async def test_a_request_waiting_past_its_ttl_is_refused_with_retry_after() -> None:
    router = make_router(slots=1, queue_ttl_s=0.05, retry_after_s=2.5)
    await admit(router, ticket("hold"))
    with pytest.raises(OverloadedError) as refused:
        await asyncio.wait_for(admit(router, ticket("late", tenant="a")), 1)
    assert refused.value.retry_after_s == 2.5 and refused.value.code == "flow_ttl"
    assert router.flow.queued("m") == 0
    labels = {"model": "m", "priority": "standard", "tenant": "a"}
    assert sample(router, "glmserve_router_flow_shed_total", **labels, reason="ttl") == 1
    assert sample(router, "glmserve_router_flow_queued_requests", **labels) == 0


@pytest.mark.asyncio
async def test_a_full_queue_sheds_the_lowest_band_first() -> None:
    router = make_router(slots=1, max_queued=2)
    await admit(router, ticket("hold"))
    batch = asyncio.create_task(admit(router, ticket("batch", band=3)))
    standard = asyncio.create_task(admit(router, ticket("standard", band=2)))
    await settle()
    premium = asyncio.create_task(admit(router, ticket("premium", band=1)))
    await settle()
    with pytest.raises(OverloadedError, match="queue for 'm' is full") as shed:
        await batch
    assert shed.value.code == "flow_queue_full" and shed.value.retry_after_s == 1.0
    # A newcomer of the lowest band waiting is refused itself: it never displaces its elders.
    with pytest.raises(OverloadedError):
        await admit(router, ticket("standard-2", band=2))
    finish(router, "hold")
    await asyncio.wait_for(premium, 1)
    finish(router, "premium")
    await asyncio.wait_for(standard, 1)


@pytest.mark.asyncio
async def test_within_the_lowest_band_the_flooding_tenant_is_shed_not_its_neighbour() -> None:
    router = make_router(slots=1, max_queued=3)
    await admit(router, ticket("hold"))
    flood = [asyncio.create_task(admit(router, ticket(f"a{i}", tenant="a"))) for i in range(3)]
    await settle()
    neighbour = asyncio.create_task(admit(router, ticket("b0", tenant="b")))
    await settle()
    with pytest.raises(OverloadedError):
        await flood[2]  # a's newest: served last of the band
    assert not neighbour.done() and router.flow.queued("m") == 3
    finish(router, "hold")
    await settle()
    assert flood[0].done() and not neighbour.done()  # a was first to wait
    finish(router, "a0")
    await asyncio.wait_for(neighbour, 1)  # then b, ahead of a's second
    assert not flood[1].done()
    finish(router, "b0")
    await asyncio.wait_for(flood[1], 1)


@pytest.mark.asyncio
async def test_a_cancelled_waiter_leaves_the_queue_at_once() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold"))
    gone = asyncio.create_task(admit(router, ticket("gone", tenant="a")))
    stays = asyncio.create_task(admit(router, ticket("stays", tenant="b")))
    await settle()
    assert router.flow.queued("m") == 2
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert router.flow.queued("m") == 1
    labels = {"model": "m", "priority": "standard", "tenant": "a"}
    assert sample(router, "glmserve_router_flow_queued_requests", **labels) == 0
    finish(router, "hold")
    await asyncio.wait_for(stays, 1)


@pytest.mark.asyncio
async def test_a_slot_granted_to_a_waiter_cancelled_before_it_ran_goes_to_the_next() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold"))
    first = asyncio.create_task(admit(router, ticket("first")))
    second = asyncio.create_task(admit(router, ticket("second")))
    await settle()
    finish(router, "hold")  # grants `first`, which has not resumed yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert router.registry.workers["w0"].in_flight == 1


@pytest.mark.asyncio
async def test_waiting_time_is_observed_per_band_and_tenant() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold", tenant="a"))
    waiting = asyncio.create_task(admit(router, ticket("w", tenant="b", band=1)))
    await asyncio.sleep(0.02)
    assert sample(router, "glmserve_router_flow_queued_requests", model="m", priority="premium", tenant="b") == 1
    finish(router, "hold")
    await waiting
    b = {"model": "m", "priority": "premium", "tenant": "b"}
    assert sample(router, "glmserve_router_flow_dispatched_total", **b) == 1
    assert sample(router, "glmserve_router_flow_tenant_wait_seconds_total", **b) >= 0.02
    assert sample(router, "glmserve_router_flow_wait_seconds_count", model="m", priority="premium") == 1
    a = {"model": "m", "priority": "standard", "tenant": "a"}
    assert sample(router, "glmserve_router_flow_dispatched_total", **a) == 1
    assert sample(router, "glmserve_router_flow_tenant_wait_seconds_total", **a) == 0


@pytest.mark.asyncio
async def test_tenants_not_listed_in_metrics_tenants_count_as_other() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("r", tenant="unlisted"))
    labels = {"model": "m", "priority": "standard", "tenant": "other"}
    assert sample(router, "glmserve_router_flow_dispatched_total", **labels) == 1


async def flood(router: Router, n: int, tenant: str = "a", band: int = 2) -> list[asyncio.Task[Decision]]:
    """`n` requests of one tenant; those that find the queue empty are granted at once."""
    tasks = [asyncio.create_task(admit(router, ticket(f"{tenant}{i}", tenant=tenant, band=band))) for i in range(n)]
    await settle()
    return tasks


@pytest.mark.asyncio
async def test_a_flood_leaves_the_reserved_slot_to_a_tenant_with_nothing_else_waiting() -> None:
    router = make_router(slots=4)  # reserved_slots: 1 by default
    a = await flood(router, 6)
    assert sum(t.done() for t in a) == 4  # nothing was waiting: every slot goes
    finish(router, "a0")
    await settle()
    assert sum(t.done() for t in a) == 4  # a has two waiting: the freed slot is kept
    b = await asyncio.wait_for(admit(router, ticket("b0", tenant="b")), 1)  # b, alone, takes it
    assert b.decode.worker_id == "w0" and router.registry.workers["w0"].in_flight == 4
    finish(router, "b0")
    await settle()
    assert sum(t.done() for t in a) == 4
    finish(router, "a1")  # two free: a4 takes the unreserved one, then a5, now alone, the reserve
    await settle()
    assert all(t.done() for t in a) and router.flow.queued("m") == 0


@pytest.mark.asyncio
async def test_reserved_slots_keep_the_bands_order() -> None:
    router = make_router(slots=4)
    premium = await flood(router, 6, band=PRIORITY_RANK["premium"])
    finish(router, "a0")
    standard = asyncio.create_task(admit(router, ticket("s0", tenant="b")))
    await settle()
    assert not standard.done()  # alone in its band, but a higher band waits: not its slot to take
    finish(router, "a1")  # a4, then a5 (now alone in its band)
    await settle()
    assert all(t.done() for t in premium) and not standard.done()
    finish(router, "a2")
    await asyncio.wait_for(standard, 1)


@pytest.mark.asyncio
async def test_without_reserved_slots_a_flood_takes_every_slot_that_frees() -> None:
    router = make_router(slots=4, reserved_slots=0)
    a = await flood(router, 6)
    finish(router, "a0")
    await settle()
    assert sum(t.done() for t in a) == 5
    a[5].cancel()


@pytest.mark.asyncio
async def test_each_replica_reserves_reserved_slots_times_the_replicas() -> None:
    router = make_router(slots=16, replicas=2)  # a share of 8: reserves 1 x 2 (at most 8 // 4)
    a = await flood(router, 11)
    finish(router, "a0")
    finish(router, "a1")
    finish(router, "a2")  # three free: one for a's backlog, two kept
    await settle()
    assert sum(t.done() for t in a) == 9 and router.flow.queued("m") == 2
    for task in a[9:]:
        task.cancel()


@pytest.mark.asyncio
async def test_the_reserve_is_given_to_floods_while_no_light_tenant_is_served_and_comes_back_with_one() -> None:
    router = make_router(slots=4, reserve_hold_s=0.05)
    a = await flood(router, 7)  # four granted at once (light: nothing waiting), three wait
    await asyncio.sleep(0.06)
    finish(router, "a0")  # no light tenant served for reserve_hold_s: the flood gets the slot
    await settle()
    assert sum(t.done() for t in a) == 5
    b = asyncio.create_task(admit(router, ticket("b0", tenant="b")))
    await settle()
    finish(router, "a1")  # b, back from idle, goes first: a light tenant served
    await asyncio.wait_for(b, 1)
    finish(router, "a2")  # so the reserve is kept again
    await settle()
    assert sum(t.done() for t in a) == 5
    for task in a[5:]:
        task.cancel()
