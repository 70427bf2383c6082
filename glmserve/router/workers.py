"""Registered engines and their liveness: who may be routed to, and how busy each one is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from glmserve.common.errors import NotFoundError
from glmserve.router.types import Load, WorkerInfo


@dataclass(slots=True)
class Worker:
    info: WorkerInfo
    load: Load
    last_seen: float
    static: bool = False
    in_flight: int = 0  # routed by this router and not completed yet
    prefill_backlog: int = 0  # uncached prompt tokens of those, until their first token
    index_ready: bool = False  # its KV events have been replayed (or it has none to replay)
    worker_id: str = field(init=False)  # read by every plugin for every request: not a property

    def __post_init__(self) -> None:
        self.worker_id = self.info.worker_id

    def busy(self) -> int:
        """Requests on the worker. Heartbeats see other routers' requests but lag; this router's own
        count is current: take the larger."""
        return max(self.in_flight, self.load.running + self.load.waiting)


class Registry:
    def __init__(self, lease_s: float, forget_after_s: float, clock: Callable[[], float]) -> None:
        self.workers: dict[str, Worker] = {}
        self._lease_s = lease_s
        self._forget_after_s = forget_after_s
        self._clock = clock

    def register(self, info: WorkerInfo, load: Load, *, static: bool = False) -> bool:
        """True when the worker is new or its spec changed (its KV index must start over)."""
        known = self.workers.get(info.worker_id)
        now = self._clock()
        if known is not None and known.info == info:
            known.load, known.last_seen = load, now
            return False
        worker = Worker(info, load, now, static=static)
        if known is not None:  # requests routed to it before the change are still on it
            worker.in_flight, worker.prefill_backlog = known.in_flight, known.prefill_backlog
        self.workers[info.worker_id] = worker
        return True

    def heartbeat(self, worker_id: str, load: Load) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFoundError(f"worker {worker_id!r} is not registered; register again", code="unknown_worker")
        worker.load, worker.last_seen = load, self._clock()

    def deregister(self, worker_id: str) -> bool:
        return self.workers.pop(worker_id, None) is not None

    def healthy(self, worker: Worker, now: float) -> bool:
        return worker.static or now - worker.last_seen <= self._lease_s

    def forget_silent(self) -> list[str]:
        """Drops workers silent for forget_after_s (their replica is gone) and returns their ids."""
        now = self._clock()
        gone = [w.worker_id for w in self.workers.values() if not w.static and now - w.last_seen > self._forget_after_s]
        for worker_id in gone:
            del self.workers[worker_id]
        return gone
