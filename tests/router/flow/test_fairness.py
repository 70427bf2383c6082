"""Fairness between the tenants of one band: weighted virtual token counters."""

from __future__ import annotations

import asyncio

import pytest

from glmserve.router.router import Router
from glmserve.router.types import Decision
from tests.router.flow.conftest import admit, finish, make_router, settle, ticket


async def serve_in_turn(router: Router, tasks: dict[str, asyncio.Task[Decision]], first: str, n: int) -> list[str]:
    """Completes one request at a time, `n` times; returns the ids granted, in order."""
    granted: list[str] = []
    before = {rid for rid, task in tasks.items() if task.done()}
    previous = first
    for _ in range(n):
        finish(router, previous)
        await settle()
        done = [rid for rid, task in tasks.items() if task.done() and rid not in granted and rid not in before]
        assert len(done) == 1, done
        granted += done
        previous = done[0]
    return granted


@pytest.mark.asyncio
async def test_a_flooding_tenant_does_not_starve_its_neighbour() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold"))
    tasks = {f"a{i}": asyncio.create_task(admit(router, ticket(f"a{i}", tenant="a"))) for i in range(20)}
    await settle()
    tasks |= {f"b{i}": asyncio.create_task(admit(router, ticket(f"b{i}", tenant="b"))) for i in range(2)}
    await settle()
    granted = await serve_in_turn(router, tasks, "hold", 5)
    # b arrived behind 20 of a's and still alternates with a from the first grant on.
    assert granted == ["a0", "b0", "a1", "b1", "a2"]
    for task in tasks.values():
        task.cancel()


@pytest.mark.asyncio
async def test_grants_follow_plan_weights_and_costs() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold"))
    tasks: dict[str, asyncio.Task[Decision]] = {}
    for i in range(12):
        for tenant, weight, cost in (("light", 1.0, 100.0), ("heavy", 3.0, 100.0), ("big", 3.0, 300.0)):
            rid = f"{tenant}{i}"
            tasks[rid] = asyncio.create_task(admit(router, ticket(rid, tenant=tenant, weight=weight, cost=cost)))
    await settle()
    granted = await serve_in_turn(router, tasks, "hold", 15)
    counts = {t: sum(r.startswith(t) for r in granted) for t in ("light", "heavy", "big")}
    # Service per weight evens out: heavy gets 3x light's grants; big's are 3x as costly, so 1x.
    assert counts == {"light": 3, "heavy": 9, "big": 3}
    for task in tasks.values():
        task.cancel()


@pytest.mark.asyncio
async def test_an_idle_tenant_banks_no_credit() -> None:
    router = make_router(slots=1)
    await admit(router, ticket("hold"))
    tasks = {f"a{i}": asyncio.create_task(admit(router, ticket(f"a{i}", tenant="a"))) for i in range(10)}
    await settle()
    granted = await serve_in_turn(router, tasks, "hold", 6)
    # b was idle while a got 6 grants; back now, it shares from here on instead of taking 6 in a row.
    tasks |= {f"b{i}": asyncio.create_task(admit(router, ticket(f"b{i}", tenant="b"))) for i in range(6)}
    await settle()
    granted = await serve_in_turn(router, tasks, granted[-1], 4)
    assert sorted(granted) == ["a6", "a7", "b0", "b1"]
    for task in tasks.values():
        task.cancel()
