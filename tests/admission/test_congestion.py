"""The engines' pace: lower plans' share shrinks when they slow the engines, and grows back slowly."""

from __future__ import annotations

import asyncio

import pytest

from glmserve.admission.congestion import EnginePace, PaceConfig
from glmserve.admission.slots import PrioritySlots


def feed(pace: EnginePace, now: float, itl_s: float, *, limited: bool = True, demand: bool = True) -> bool:
    """One interval of 20 tokens `itl_s` apart, closed at `now`."""
    pace.observe(itl_s, tokens=20)
    return pace.update(now, limited=limited, demand=demand)


def test_slower_engines_shrink_the_factor_at_once_and_it_grows_back_slowly() -> None:
    pace = EnginePace(PaceConfig(interval_s=1.0))
    feed(pace, 1.0, 0.010)  # the uncontended pace
    feed(pace, 2.0, 0.014)  # 1.4x: contended
    assert pace.scale == pytest.approx(0.7)
    feed(pace, 3.0, 0.014)
    assert pace.scale == pytest.approx(0.49)
    assert pace.last_ratio == pytest.approx(1.4)
    assert feed(pace, 4.0, 0.0105)  # back to pace, lower plans waiting: probe upwards
    assert pace.scale == pytest.approx(0.59)
    assert not feed(pace, 5.0, 0.0120)  # between fast and slow: hold
    assert pace.scale == pytest.approx(0.59)


def test_the_factor_moves_only_while_it_applies_and_on_enough_evidence() -> None:
    pace = EnginePace(PaceConfig(interval_s=1.0, min_tokens=8))
    feed(pace, 1.0, 0.010)
    feed(pace, 2.0, 0.030, limited=False)  # no higher class active: the factor does not apply
    assert pace.scale == 1.0
    pace.observe(0.050, tokens=3)  # too few tokens to judge the pace
    assert not pace.update(3.0, limited=True, demand=True)
    assert pace.scale == 1.0
    pace.observe(0.050, tokens=20)
    pace.update(3.5, limited=True, demand=True)  # the interval is not over yet
    assert pace.scale == 1.0
    pace.update(4.0, limited=True, demand=True)
    assert pace.scale == pytest.approx(0.7)
    for t in range(5, 40):
        feed(pace, float(t), 0.050)
    assert pace.scale == pytest.approx(PaceConfig().min_scale)
    assert not feed(pace, 40.0, 0.010, demand=False)  # fast again, but nobody waits: no probing
    assert pace.scale == pytest.approx(PaceConfig().min_scale)


def test_the_base_pace_is_forgotten_after_its_window() -> None:
    pace = EnginePace(PaceConfig(interval_s=1.0, base_window_s=10.0))
    feed(pace, 1.0, 0.010)
    feed(pace, 2.0, 0.020)
    assert pace.last_ratio == pytest.approx(2.0)
    feed(pace, 20.0, 0.020)  # the 10 ms interval left the window: 20 ms is the base now
    assert pace.last_ratio == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"fast": 1.3, "slow": 1.2}, "fast <= slow"), ({"backoff": 1.0}, "backoff"), ({"min_scale": 0}, "min_scale")],
)
def test_config_is_checked(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PaceConfig(**fields)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_slots_cap_lower_plans_by_the_pace_and_grant_when_it_recovers() -> None:
    clock = Clock()
    slots = PrioritySlots(10, 10, clock=clock, pace=EnginePace(PaceConfig(interval_s=1.0), start=clock.now))
    await slots.acquire("premium")  # premium is active: batch may hold 4 of 10 (running counts premium)
    for _ in range(3):
        await slots.acquire("batch")
    slots.observe_gap(0.010, 20)
    clock.now += 1
    slots.observe_gap(0.010, 20)  # closes the uncontended interval
    clock.now += 1
    slots.observe_gap(0.020, 20)  # closes a 2x interval: 0.7 x 40% of 10 -> 2 slots
    assert slots.pace.scale == pytest.approx(0.7)
    slots.release()  # a batch request ends: 3 running, over batch's 2
    waiter = asyncio.create_task(slots.acquire("batch"))
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release()
    slots.release()  # 1 running (premium): batch may start again
    await asyncio.sleep(0)
    assert waiter.done()
    second = asyncio.create_task(slots.acquire("batch"))  # 2 running: at batch's scaled share
    await asyncio.sleep(0)
    assert not second.done()
    for _ in range(4):  # the engines keep pace while batch waits: the share grows back ...
        clock.now += 1
        slots.observe_gap(0.010, 20)
    await asyncio.sleep(0)
    assert second.done()  # ... and the waiting request starts without any release
