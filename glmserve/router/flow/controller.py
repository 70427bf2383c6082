"""The flow controller: a request is routed only once this replica has a free engine slot for its
model (late binding: the worker is chosen on fresh KV and load state, not when it arrived); until
then it waits in its model's queue (queue.py), from which slots are granted by priority band, then
fairly between tenants. Single-threaded like the Router: every call runs on the server's loop."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter

from glmserve.common.errors import OverloadedError
from glmserve.router.flow.config import FlowConfig
from glmserve.router.flow.metrics import FlowMetrics, ShedReason
from glmserve.router.flow.queue import ModelQueue
from glmserve.router.flow.ticket import Capacity, Ticket, Waiter


class FlowController:
    def __init__(self, config: FlowConfig, capacity: Capacity, metrics: FlowMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or FlowMetrics()
        self._capacity = capacity
        self._queues: dict[str, ModelQueue] = {}
        # Granted slots whose waiter has not resumed yet: the router books a request only when it
        # routes it, after acquire returns, so until then capacity.free() still counts them free.
        self._in_transit: Counter[str] = Counter()
        self._held: dict[str, str] = {}  # request id -> model, from grant to release
        self._light_at: dict[str, float] = {}  # model -> when a light tenant was last granted a slot
        self._seq = itertools.count()

    def queued(self, model: str) -> int:
        queue = self._queues.get(model)
        return queue.size if queue else 0

    async def acquire(self, ticket: Ticket) -> None:
        """Returns when `ticket` may be routed now: route it before awaiting anything else (the
        slot counts as taken once the router has booked it), and `release` it when it ends or
        fails to route. Raises OverloadedError (retry_after_s set) when refused: the queue is
        full and it is the lowest band's last to be served, or it waited past queue_ttl_s.
        Cancelled while waiting, it leaves the queue at once."""
        model = ticket.model
        if not self.queued(model) and self._free(model) > 0:  # alone, it is light: reserved slots too
            self._held[ticket.request_id] = model
            self._light_at[model] = asyncio.get_running_loop().time()
            self.metrics.waited(ticket, 0.0)
            return
        loop = asyncio.get_running_loop()
        waiter = Waiter(ticket, next(self._seq), loop.time(), loop.create_future())
        queue = self._queues.setdefault(model, ModelQueue(self.config.idle_credit))
        if queue.size >= self.config.max_queued:
            shed = queue.shed_candidate(waiter)
            if shed is waiter:
                self.metrics.refused(ticket, "queue_full")
                raise self._refusal(ticket, "queue_full")
            self._refuse(shed, "queue_full")
        queue.push(waiter)
        waiter.expiry = loop.call_at(waiter.since + self.config.queue_ttl_s, self._refuse, waiter, "ttl")
        self.metrics.enqueued(ticket, 1)
        self._dispatch(model)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        self._in_transit[model] -= 1

    def release(self, request_id: str) -> None:
        """The request ended (or was never routed): its slot frees and the next waiter is granted.
        Unknown ids (released twice, never acquired) are ignored."""
        model = self._held.pop(request_id, None)
        if model is not None:
            self._dispatch(model)

    def poke(self, model: str) -> None:
        """Capacity for `model` may have grown (a worker registered, heartbeat, completed)."""
        self._dispatch(model)

    def _free(self, model: str) -> int:
        return self._capacity.slots(model)[1] - self._in_transit[model]

    def _dispatch(self, model: str) -> None:
        queue = self._queues.get(model)
        if not queue or not queue.size:
            return
        share, free = self._capacity.slots(model)
        free -= self._in_transit[model]
        # Slots kept for light tenants: without them, once a flood holds every slot, a light tenant
        # (or a higher band) waits for the next one to free, however little it sends. A replica's
        # slots free `replicas` times less often than the engines' (its share is partitioned), so
        # its reserve must last as many times longer. While only floods have waited for
        # reserve_hold_s, they get every slot.
        now = asyncio.get_running_loop().time()
        reserved = min(self.config.reserved_slots * self.config.replicas, share // 4)
        if now - self._light_at.get(model, -math.inf) > self.config.reserve_hold_s:
            reserved = 0
        while free > 0 and queue.size:
            waiter = queue.pop(light=free <= reserved)
            if waiter is None:  # the head is a flood's and only reserved slots are free
                return
            self._left(waiter)
            if waiter.granted.cancelled():  # its task was cancelled and has not run since
                continue
            self._in_transit[model] += 1
            if waiter.light:
                self._light_at[model] = now
            self._held[waiter.ticket.request_id] = model
            self.metrics.waited(waiter.ticket, now - waiter.since)
            waiter.granted.set_result(None)
            free -= 1

    def _abandon(self, waiter: Waiter) -> None:
        """Its task was cancelled: leave the line, or hand back the slot it was just granted."""
        if waiter.queued:
            self._queues[waiter.ticket.model].remove(waiter)
            self._left(waiter)
        elif waiter.granted.done() and not waiter.granted.cancelled() and waiter.granted.exception() is None:
            self._in_transit[waiter.ticket.model] -= 1
            self.release(waiter.ticket.request_id)

    def _refuse(self, waiter: Waiter, reason: ShedReason) -> None:
        if not waiter.queued:
            return
        self._queues[waiter.ticket.model].remove(waiter)
        self._left(waiter)
        self.metrics.refused(waiter.ticket, reason)
        if not waiter.granted.done():
            waiter.granted.set_exception(self._refusal(waiter.ticket, reason))

    def _left(self, waiter: Waiter) -> None:
        if waiter.expiry is not None:
            waiter.expiry.cancel()
        self.metrics.enqueued(waiter.ticket, -1)

    def _refusal(self, ticket: Ticket, reason: ShedReason) -> OverloadedError:
        if reason == "ttl":
            message = f"waited {self.config.queue_ttl_s:g}s for a free {ticket.model!r} engine slot"
        else:
            message = f"the queue for {ticket.model!r} is full ({self.config.max_queued} requests waiting)"
        return OverloadedError(message, code=f"flow_{reason}", retry_after_s=self.config.retry_after_s)
