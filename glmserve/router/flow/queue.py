"""One model's waiting line: priority bands served strictly in order (as llm-d's flow control
does), each band fair between its tenants (fairness.py)."""

from __future__ import annotations

from glmserve.router.flow.fairness import Band
from glmserve.router.flow.ticket import Waiter


class ModelQueue:
    def __init__(self, idle_credit: int) -> None:
        self.size = 0
        self._idle_credit = idle_credit
        self._bands: dict[int, Band] = {}
        self._ranks: list[int] = []  # the bands' ranks, ascending: few (one per priority class)

    def push(self, waiter: Waiter) -> None:
        rank = waiter.ticket.band
        band = self._bands.get(rank)
        if band is None:
            band = self._bands[rank] = Band(self._idle_credit)
            self._ranks = sorted(self._bands)
        band.push(waiter)
        self.size += 1

    def pop(self, *, light: bool = False) -> Waiter | None:
        """The next waiter: the fairest choice of the highest band with waiters (must not be empty).
        `light`: only a light tenant's of that band (fairness.py), None if it has none; a
        lower band's is never chosen, so the bands' order holds for reserved slots too."""
        band = next(self._bands[r] for r in self._ranks if self._bands[r].size)
        waiter = band.pop_light() if light else band.pop()
        if waiter is not None:
            self.size -= 1
            waiter.queued = False
        return waiter

    def remove(self, waiter: Waiter) -> None:
        self._bands[waiter.ticket.band].remove(waiter)
        self.size -= 1
        waiter.queued = False

    def shed_candidate(self, arriving: Waiter) -> Waiter:
        """Who leaves when the line is full and `arriving` wants in: the waiter of the lowest band
        that band would serve last; the arriving one itself when its band is lower than every
        waiting one's, or equal and it would be served last (a newcomer never displaces its peers
        that came first with the same standing)."""
        if not self.size:
            return arriving
        lowest = next(r for r in reversed(self._ranks) if self._bands[r].size)
        if arriving.ticket.band > lowest:
            return arriving
        if arriving.ticket.band < lowest:
            return self._bands[lowest].last()
        band = self._bands[lowest]
        band.push(arriving)
        last = band.last()
        band.remove(arriving)
        return last
