"""Fairness between the tenants of one priority band: a virtual token counter (VTC, Sheng et al.,
"Fairness in Serving Large Language Models", OSDI 2024), i.e. start-time fair queuing with each
tenant as a flow.

Each tenant has a counter of the service it was granted, in cost / weight (cost: the request's
expected tokens; weight: its plan's). The band serves the oldest request of the backlogged tenant
with the lowest counter, then adds that request's cost / weight to the counter. A tenant that
becomes backlogged again is lifted to the band's virtual time (the counter of the last request
served), so idling banks no credit: it competes from now on, not from when it last sent. Over any
busy period, two backlogged tenants' granted costs differ by at most one request's cost per weight:
a tenant sending ten times its share waits for itself, not its neighbours.
"""

from __future__ import annotations

import heapq

from glmserve.router.flow.ticket import Waiter


class Band:
    def __init__(self) -> None:
        self.size = 0
        self._flows: dict[str, dict[int, Waiter]] = {}  # tenant -> its waiters, oldest first
        self._backlog: dict[str, float] = {}  # tenant -> virtual cost of its waiters
        self._counter: dict[str, float] = {}
        self._vtime = 0.0
        # (counter, head seq, tenant) per backlogged tenant; entries whose head or counter moved
        # since are stale and skipped when popped (cheaper than re-heapifying on each removal).
        self._heap: list[tuple[float, int, str]] = []

    def push(self, waiter: Waiter) -> None:
        tenant = waiter.ticket.tenant
        flow = self._flows.get(tenant)
        if flow is None:
            flow = self._flows[tenant] = {}
            self._backlog[tenant] = 0.0
            self._counter[tenant] = max(self._counter.get(tenant, 0.0), self._vtime)
            heapq.heappush(self._heap, (self._counter[tenant], waiter.seq, tenant))
        flow[waiter.seq] = waiter
        self._backlog[tenant] += waiter.vcost
        self.size += 1

    def pop(self) -> Waiter:
        """The next waiter to serve (the band must not be empty)."""
        while True:
            counter, seq, tenant = heapq.heappop(self._heap)
            flow = self._flows.get(tenant)
            if flow and next(iter(flow)) == seq and self._counter[tenant] == counter:
                break
        waiter = flow.pop(seq)
        self._vtime = counter
        self._counter[tenant] = counter + waiter.vcost
        self._left(waiter, flow)
        if flow:
            heapq.heappush(self._heap, (self._counter[tenant], next(iter(flow)), tenant))
        return waiter

    def last(self) -> Waiter:
        """The waiter this band would serve last: the newest of the tenant furthest ahead once its
        whole backlog is served (the band must not be empty)."""
        tenant = max(self._flows, key=lambda t: (self._counter[t] + self._backlog[t], next(reversed(self._flows[t]))))
        return self._flows[tenant][next(reversed(self._flows[tenant]))]

    def remove(self, waiter: Waiter) -> None:
        flow = self._flows[waiter.ticket.tenant]
        was_head = next(iter(flow)) == waiter.seq
        del flow[waiter.seq]
        self._left(waiter, flow)
        if flow and was_head:
            heapq.heappush(self._heap, (self._counter[waiter.ticket.tenant], next(iter(flow)), waiter.ticket.tenant))

    def _left(self, waiter: Waiter, flow: dict[int, Waiter]) -> None:
        tenant = waiter.ticket.tenant
        self.size -= 1
        if flow:
            self._backlog[tenant] -= waiter.vcost
        else:
            del self._flows[tenant], self._backlog[tenant]
            if self._counter[tenant] <= self._vtime:  # lifted to vtime on its return anyway
                del self._counter[tenant]
