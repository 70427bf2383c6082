"""The worker of test_exactness: one OS process hammering one tenant through its own Limiter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from glmserve.admission.backend import LimitsBackend
from glmserve.admission.limiter import Limiter
from glmserve.admission.tenants import ResolvedTenant
from tests.admission.helpers import tenant

FROZEN_US = 1_800_000_000_000_000
TASKS = 16  # concurrent admissions per process, so batches carry several decisions


async def count_allowed(store: LimitsBackend, who: ResolvedTenant, attempts: int) -> int:
    limiter = Limiter(store)

    async def task(n: int) -> int:
        return sum([(await limiter.admit(who, model="m", prompt_tokens=1)).allowed for _ in range(n)])

    allowed = sum(await asyncio.gather(*(task(attempts // TASKS) for _ in range(TASKS))))
    await limiter.aclose()
    return allowed


async def record_for(store: LimitsBackend, who: ResolvedTenant, seconds: float) -> list[tuple[int, bool]]:
    """(server time, allowed) of every attempt made during `seconds`."""
    limiter = Limiter(store)
    deadline = time.monotonic() + seconds
    seen: list[tuple[int, bool]] = []

    async def task() -> None:
        while time.monotonic() < deadline:
            admission = await limiter.admit(who, model="m", prompt_tokens=1)
            seen.append((admission.decision.now_us, admission.allowed))

    await asyncio.gather(*(task() for _ in range(TASKS)))
    await limiter.aclose()
    return seen


@dataclass(frozen=True, slots=True)
class Load:
    rpm: int  # on a frozen clock
    concurrent: int  # on a frozen clock
    attempts: int  # per worker, for each of the two above
    real_rpm: int  # on the real clock, for real_seconds
    real_seconds: float


def frozen() -> int:
    return FROZEN_US  # time stands still: no refill can blur "exactly N"


def hammer(
    make_store: Callable[[Callable[[], int] | None], LimitsBackend],
    barrier: Barrier,
    results: Queue[dict[str, Any]],
    load: Load,
) -> None:
    out: dict[str, Any] = {}
    barrier.wait()
    who = tenant(rpm=load.rpm, tenant_id="rpm")
    out["rpm"] = asyncio.run(count_allowed(make_store(frozen), who, load.attempts))
    barrier.wait()
    who = tenant(concurrent=load.concurrent, tenant_id="conc")
    out["concurrent"] = asyncio.run(count_allowed(make_store(frozen), who, load.attempts))
    barrier.wait()
    who = tenant(rpm=load.real_rpm, tenant_id="real")
    out["real"] = asyncio.run(record_for(make_store(None), who, load.real_seconds))
    results.put(out)
