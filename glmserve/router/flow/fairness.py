"""Fairness between the tenants of one priority band: a virtual token counter (VTC, Sheng et al.,
"Fairness in Serving Large Language Models", OSDI 2024), i.e. start-time fair queuing with each
tenant as a flow.

Each tenant has a counter of the service it was granted, in cost / weight (cost: the request's
expected tokens; weight: its plan's). The band serves the oldest request of the backlogged tenant
with the lowest counter, then adds that request's cost / weight to the counter. A tenant that
becomes backlogged again is lifted to the band's virtual time (the highest counter served) less a
credit of `idle_credit` of its requests: it competes from now on, not from when it last sent, and
a short burst of a tenant that was idle goes ahead of the backlogged ones (VTC proper, credit 0,
makes such a burst alternate with a flood's requests however little the tenant sends). Over any
busy period, two backlogged tenants' granted costs differ by at most (1 + idle_credit) requests'
cost per weight: a tenant sending ten times its share waits for itself, not its neighbours.

Light tenants are those with exactly one request waiting or still within their credit (counter
behind the virtual time): the controller gives a replica's reserved slots only to them
(`pop_light`).
"""

from __future__ import annotations

import heapq

from glmserve.router.flow.ticket import Waiter

Entry = tuple[float, int, str]  # (counter, head seq, tenant)


class Band:
    def __init__(self, idle_credit: int) -> None:
        self.size = 0
        self._credit = idle_credit
        self._flows: dict[str, dict[int, Waiter]] = {}  # tenant -> its waiters, oldest first
        self._backlog: dict[str, float] = {}  # tenant -> virtual cost of its waiters
        self._counter: dict[str, float] = {}
        self._vtime = 0.0
        # One entry per backlogged tenant; entries whose head or counter moved since are stale and
        # skipped when popped (cheaper than re-heapifying on each removal).
        self._heap: list[Entry] = []
        self._light: list[Entry] = []  # the same, for tenants with one waiter

    def push(self, waiter: Waiter) -> None:
        tenant = waiter.ticket.tenant
        flow = self._flows.get(tenant)
        if flow is None:
            flow = self._flows[tenant] = {}
            self._backlog[tenant] = 0.0
            lifted = self._vtime - self._credit * waiter.vcost
            self._counter[tenant] = max(self._counter.get(tenant, 0.0), lifted)
            heapq.heappush(self._heap, (self._counter[tenant], waiter.seq, tenant))
        flow[waiter.seq] = waiter
        self._backlog[tenant] += waiter.vcost
        self.size += 1
        self._note_light(tenant, flow)

    def pop(self) -> Waiter:
        """The next waiter to serve (the band must not be empty)."""
        while not self._valid(entry := heapq.heappop(self._heap)):
            pass
        return self._serve(*entry)

    def pop_light(self) -> Waiter | None:
        """The next waiter if the band has a light tenant: the one behind the virtual time with the
        lowest counter, else the lowest counter's of those with one waiter; None when none is light."""
        while self._heap and not self._valid(self._heap[0]):
            heapq.heappop(self._heap)
        if self._heap and self._heap[0][0] < self._vtime:
            return self._serve(*heapq.heappop(self._heap))
        while self._light:
            entry = heapq.heappop(self._light)
            if self._valid(entry) and len(self._flows[entry[2]]) == 1:
                return self._serve(*entry)
        return None

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

    def _valid(self, entry: Entry) -> bool:
        """Whether a heap entry is still its tenant's head at its current counter."""
        counter, seq, tenant = entry
        flow = self._flows.get(tenant)
        return flow is not None and next(iter(flow)) == seq and self._counter[tenant] == counter

    def _serve(self, counter: float, seq: int, tenant: str) -> Waiter:
        flow = self._flows[tenant]
        waiter = flow.pop(seq)
        waiter.light = not flow or counter < self._vtime
        # max: a tenant served within its credit is behind the virtual time, which never goes back
        self._vtime = max(self._vtime, counter)
        self._counter[tenant] = counter + waiter.vcost
        self._left(waiter, flow)
        if flow:
            heapq.heappush(self._heap, (self._counter[tenant], next(iter(flow)), tenant))
        return waiter

    def _note_light(self, tenant: str, flow: dict[int, Waiter]) -> None:
        if len(flow) != 1:
            return
        if len(self._light) > 2 * len(self._flows) + 64:  # stale entries pile up while no reserve is used
            self._light = [(self._counter[t], next(iter(f)), t) for t, f in self._flows.items() if len(f) == 1]
            heapq.heapify(self._light)
        else:
            heapq.heappush(self._light, (self._counter[tenant], next(iter(flow)), tenant))

    def _left(self, waiter: Waiter, flow: dict[int, Waiter]) -> None:
        tenant = waiter.ticket.tenant
        self.size -= 1
        if flow:
            self._backlog[tenant] -= waiter.vcost
            self._note_light(tenant, flow)
        else:
            del self._flows[tenant], self._backlog[tenant]
            if self._counter[tenant] <= self._vtime - self._credit * waiter.vcost:  # lifted on return anyway
                del self._counter[tenant]
