"""Fairness between the tenants of one band: weighted virtual token counters."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass

import pytest

from glmserve.router.flow.fairness import Band
from glmserve.router.flow.ticket import Waiter
from glmserve.router.types import Decision
from tests.router.flow.conftest import admit, finish, make_router, settle, ticket

# weight (the plan's) and cost (tokens) of each tenant's requests; tenants not named: 1.0 and 100
TENANTS = {"light": (1.0, 100.0), "heavy": (3.0, 100.0), "big": (3.0, 300.0)}


@dataclass(frozen=True, slots=True)
class Wave:
    """Requests that join the queue (`tenant: count`, queued one of each tenant in turn), then
    `grants` slots freed one at a time."""

    queued: dict[str, int]
    grants: int


@pytest.mark.parametrize(
    ("waves", "granted", "idle_credit"),
    [
        pytest.param(
            [Wave({"a": 20}, 0), Wave({"b": 2}, 2), Wave({}, 2), Wave({}, 1)],
            [{}, {"a": 1, "b": 1}, {"a": 1, "b": 1}, {"a": 1}],
            3,
            id="a flooding tenant does not starve its neighbour: b, behind 20 of a's, alternates with a at once",
        ),
        pytest.param(
            [Wave({"light": 12, "heavy": 12, "big": 12}, 15)],
            [{"light": 3, "heavy": 9, "big": 3}],
            3,
            id="grants follow plan weights and costs: heavy 3x light's; big's cost 3x, so 1x",
        ),
        pytest.param(
            [Wave({"a": 10}, 6), Wave({"b": 6}, 4)],
            [{"a": 6}, {"a": 2, "b": 2}],
            0,
            id="plain VTC: b, back after a's 6 grants, shares at once instead of taking 6 in a row",
        ),
        pytest.param(
            [Wave({"a": 10}, 6), Wave({"b": 6}, 7)],
            [{"a": 6}, {"b": 5, "a": 2}],
            3,
            id="an idle tenant banks only idle_credit: b, back after a's 6 grants, takes 3 + 1, then shares",
        ),
    ],
)
@pytest.mark.asyncio
async def test_grants_between_the_tenants_of_one_band(
    waves: list[Wave], granted: list[dict[str, int]], idle_credit: int
) -> None:
    """One slot, held; each wave's requests queue behind it, then each finish grants the next.
    `granted`: how many of each wave's grants went to each tenant."""
    router = make_router(slots=1, idle_credit=idle_credit)
    await admit(router, ticket("hold"))
    tasks: dict[str, asyncio.Task[Decision]] = {}
    queued: Counter[str] = Counter()
    order, previous = ["hold"], "hold"
    by_wave: list[Counter[str]] = []
    try:
        for wave in waves:
            for turn in range(max(wave.queued.values(), default=0)):
                for tenant, count in wave.queued.items():
                    if turn < count:
                        weight, cost = TENANTS.get(tenant, (1.0, 100.0))
                        rid = f"{tenant}{queued[tenant]}"
                        queued[tenant] += 1
                        tasks[rid] = asyncio.create_task(
                            admit(router, ticket(rid, tenant=tenant, weight=weight, cost=cost))
                        )
            await settle()
            grants: Counter[str] = Counter()
            for _ in range(wave.grants):
                finish(router, previous)
                await settle()
                done = [rid for rid, task in tasks.items() if task.done() and rid not in order]
                assert len(done) == 1, done
                previous = done[0]
                order.append(previous)
                grants[previous.rstrip("0123456789")] += 1
            by_wave.append(grants)
        assert by_wave == [Counter(g) for g in granted]
        # within a tenant, requests are granted in the order they came
        for tenant in queued:
            mine = [int(rid.removeprefix(tenant)) for rid in order if rid.rstrip("0123456789") == tenant]
            assert mine == sorted(mine)
    finally:
        for task in tasks.values():
            task.cancel()


@pytest.mark.asyncio
async def test_a_light_tenant_is_one_with_one_request_waiting_or_within_its_idle_credit() -> None:
    loop = asyncio.get_running_loop()
    seq = itertools.count()
    band = Band(idle_credit=3)

    def push(tenant: str, n: int) -> None:
        for _ in range(n):
            i = next(seq)
            band.push(Waiter(ticket(f"{tenant}{i}", tenant=tenant), i, 0.0, loop.create_future()))

    push("a", 20)
    assert [band.pop().ticket.tenant for _ in range(10)] == ["a"] * 10  # virtual time: 900
    assert band.pop_light() is None  # a, backlogged, is never light
    push("b", 5)  # lifted to 900 - 3 x 100: within its credit for three requests
    assert [w.ticket.tenant for w in (band.pop_light(), band.pop_light(), band.pop_light())] == ["b"] * 3
    assert band.pop_light() is None  # b is level with the virtual time and has two waiting
    assert band.pop().ticket.tenant == "b"  # still the lowest counter: VTC's order goes on
    assert band.pop().ticket.tenant == "a"  # level: a's head came first
    light = band.pop_light()  # b's last, alone, is light again
    assert light is not None and light.ticket.tenant == "b"
