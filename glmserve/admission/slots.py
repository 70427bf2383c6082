"""Engine slots handed out by plan priority: what keeps paying tenants fast when engines saturate.

Every request holds one of a model's `capacity` engine slots while it runs. While a higher class
is active (it asked for a slot within the last `reserve_s`), a class may fill only its `SHARE` of
the slots, times the engines' pace factor (`congestion.py`: less than 1 while the lower classes
slow the engines down), so the lowest plans leave headroom the higher plans use the moment they
arrive: their requests never queue behind a flood. With no higher class active, any class may fill every slot
(the engines never idle for a reservation nobody uses). Requests that cannot start wait in
priority order (then arrival), and when the waiting line is full the lowest-priority, newest
waiter is shed, so what is refused is always the cheapest work.

Waiting here instead of bouncing clients with 503s matters on saturated machines: a refused
client retries, and every retry costs the ingress a parse, an authentication and a render.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from glmserve.admission.congestion import EnginePace
from glmserve.common.errors import OverloadedError
from glmserve.common.tenancy import PRIORITY_RANK, PriorityClass

# The most of a model's slots each class may fill while a class above it is active: batch at most
# 40%, so 60% stays free for the classes above it even while batch traffic is unbounded. The
# engines' pace scales these down further when lower classes slow the engines (congestion.py).
SHARE: dict[PriorityClass, float] = {"batch": 0.4, "standard": 0.75, "premium": 1.0, "critical": 1.0}


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int
    seq: int
    priority: PriorityClass = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)


class PrioritySlots:
    """One model's engine slots in one process. `capacity` 0 means unknown: never wait, never shed."""

    def __init__(
        self,
        capacity: int,
        max_waiting: int,
        retry_after_s: float = 1.0,
        reserve_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        pace: EnginePace | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.reserve_s = reserve_s
        self.running = 0
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self._clock = clock
        self._last_asked: dict[int, float] = {}  # rank -> when that class last asked for a slot
        self.pace = pace or EnginePace(start=clock())

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def can_start(self, priority: PriorityClass) -> bool:
        if not self.capacity:
            return True
        if not self._higher_active(PRIORITY_RANK[priority]):
            return self.running < self.capacity
        return self.running < max(1, int(SHARE[priority] * self.capacity * self.pace.scale))

    def observe_gap(self, gap_s: float, tokens: int = 1) -> None:
        """`tokens` streamed tokens arrived `gap_s` apart: the engines' pace."""
        self.pace.observe(gap_s, tokens)
        self._update_pace()

    def _update_pace(self) -> None:
        now = self._clock()
        if not self.pace.due(now):  # every streamed chunk lands here: stay cheap until an interval ends
            return
        # the factor applies while some class has a higher one active, i.e. two or more are active
        if self.pace.update(now, limited=len(self._active_ranks(now)) > 1, demand=bool(self._waiting)):
            self._grant()

    def _active_ranks(self, now: float) -> list[int]:
        since = now - self.reserve_s
        return [r for r, t in self._last_asked.items() if t > since]

    def _higher_active(self, rank: int) -> bool:
        return any(r < rank for r in self._active_ranks(self._clock()))

    async def acquire(self, priority: PriorityClass) -> None:
        """Returns once a slot is held (pair with `release`); raises OverloadedError when shed."""
        rank = PRIORITY_RANK[priority]
        self._last_asked[rank] = self._clock()
        self._update_pace()
        if self.can_start(priority) and not any(w.rank <= rank for w in self._waiting):
            self.running += 1
            return
        waiter = _Waiter(rank, next(self._seq), priority, asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting, waiter)
        if len(self._waiting) > self.max_waiting:
            self._shed(max(self._waiting))
        try:
            await waiter.granted
        except asyncio.CancelledError:
            # The client went away: give up the place in line, or the slot if it was just granted.
            if waiter.granted.done() and not waiter.granted.cancelled() and waiter.granted.exception() is None:
                self.release()
            else:
                self._remove(waiter)
            raise

    def release(self) -> None:
        self.running -= 1
        self._grant()

    def _grant(self) -> None:
        # Best first; a waiter whose class is at its share lets those behind it (lower classes are
        # capped tighter, so none of them could start either).
        while self._waiting and self.can_start(self._waiting[0].priority):
            waiter = heapq.heappop(self._waiting)
            self.running += 1
            waiter.granted.set_result(None)

    def _shed(self, waiter: _Waiter) -> None:
        self._remove(waiter)
        waiter.granted.set_exception(
            OverloadedError(
                f"the engines are saturated and {waiter.priority} requests are shed first; retry shortly",
                retry_after_s=self.retry_after_s,
            )
        )

    def _remove(self, waiter: _Waiter) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)
            heapq.heapify(self._waiting)
