"""Engine slots by plan priority: headroom for higher plans, waiting order, shedding the cheapest."""

from __future__ import annotations

import asyncio

import pytest

from glmserve.admission.slots import PrioritySlots
from glmserve.common.errors import OverloadedError

pytestmark = pytest.mark.asyncio


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_batch_leaves_headroom_that_premium_takes_at_once() -> None:
    slots = PrioritySlots(capacity=10, max_waiting=10)
    await slots.acquire("premium")  # premium traffic is active ...
    slots.release()
    for _ in range(4):  # ... so batch may fill 40% of the slots
        await slots.acquire("batch")
    fifth = asyncio.create_task(slots.acquire("batch"))
    await _settle()
    assert not fifth.done() and slots.waiting == 1
    await asyncio.wait_for(slots.acquire("premium"), 0.1)  # no wait behind the batch line
    assert slots.running == 5
    slots.release()  # a batch request ends: the waiting one is still over batch's share
    await _settle()
    assert not fifth.done()
    slots.release()
    await _settle()
    assert fifth.done() and slots.running == 4
    fifth.result()


async def test_batch_fills_every_slot_until_a_higher_plan_shows_up() -> None:
    clock = Clock()
    slots = PrioritySlots(capacity=4, max_waiting=10, reserve_s=30, clock=clock)
    for _ in range(4):  # nobody else is asking: the engines must not idle for a reservation
        await asyncio.wait_for(slots.acquire("batch"), 0.1)
    premium = asyncio.create_task(slots.acquire("premium"))
    batch = asyncio.create_task(slots.acquire("batch"))
    await _settle()
    slots.release()  # the freed slot goes to premium, and batch is capped at 1 of 4 from now on
    await _settle()
    assert premium.done() and not batch.done()
    slots.release()
    slots.release()
    await _settle()
    assert not batch.done() and slots.running == 2  # over batch's 1 slot while premium is active
    clock.now += 31  # premium went quiet: the cap lifts at the next release
    slots.release()
    await _settle()
    assert batch.done() and slots.running == 2


async def test_waiters_start_by_priority_then_arrival() -> None:
    slots = PrioritySlots(capacity=2, max_waiting=10)
    await slots.acquire("premium")
    await slots.acquire("premium")
    started: list[str] = []

    async def wait(name: str, priority: str) -> None:
        await slots.acquire(priority)  # type: ignore[arg-type]
        started.append(name)

    # Premium and critical may fill every slot, so only priority and arrival order them.
    tasks = [asyncio.create_task(wait(n, "premium")) for n in ("p1", "p2")]
    await _settle()
    tasks.append(asyncio.create_task(wait("c1", "critical")))
    await _settle()
    for _ in range(3):
        slots.release()
        await _settle()
    assert started == ["c1", "p1", "p2"]


async def test_a_full_line_sheds_the_lowest_newest_waiter() -> None:
    slots = PrioritySlots(capacity=1, max_waiting=2, retry_after_s=3.0)
    await slots.acquire("premium")
    old_batch = asyncio.create_task(slots.acquire("batch"))
    new_batch = asyncio.create_task(slots.acquire("batch"))
    await _settle()
    premium = asyncio.create_task(slots.acquire("premium"))
    await _settle()
    with pytest.raises(OverloadedError) as shed:
        await new_batch
    assert shed.value.retry_after_s == 3.0 and "batch" in shed.value.message
    assert not old_batch.done() and not premium.done()
    # A batch request arriving at a full line of better work is refused itself.
    with pytest.raises(OverloadedError):
        await slots.acquire("batch")
    slots.release()
    await _settle()
    assert premium.done() and not old_batch.done()
    old_batch.cancel()


async def test_a_client_leaving_the_line_gives_up_its_place() -> None:
    slots = PrioritySlots(capacity=1, max_waiting=4)
    await slots.acquire("standard")
    leaving = asyncio.create_task(slots.acquire("standard"))
    staying = asyncio.create_task(slots.acquire("standard"))
    await _settle()
    leaving.cancel()
    await _settle()
    assert slots.waiting == 1
    slots.release()
    await _settle()
    assert staying.done() and slots.running == 1


async def test_a_slot_granted_to_a_cancelled_waiter_is_given_back() -> None:
    slots = PrioritySlots(capacity=1, max_waiting=4)
    await slots.acquire("standard")
    waiter = asyncio.create_task(slots.acquire("standard"))
    await _settle()
    slots.release()  # grants the slot to the waiter, which is cancelled before it resumes
    waiter.cancel()
    await _settle()
    assert waiter.cancelled() and slots.running == 0 and slots.waiting == 0


async def test_unknown_capacity_never_waits() -> None:
    slots = PrioritySlots(capacity=0, max_waiting=0)
    for _ in range(100):
        await asyncio.wait_for(slots.acquire("batch"), 0.1)
    assert slots.running == 100
