"""Registered engines and their liveness: who may be routed to, and how busy each one is.

Each worker has a dense slot in the registry's `Board`: numpy columns of the load figures that
routing reads (written through by the Worker's properties), so choosing the least loaded of a
thousand workers is a few array operations instead of a Python step per worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from glmserve.common.errors import NotFoundError
from glmserve.router.types import Load, Role, WorkerInfo

_COLUMNS = ("reported", "in_flight", "backlog", "kv_usage", "last_seen", "static", "max_running", "block_size")


class Board:
    """Per-slot load columns; a freed slot is reused by the next worker."""

    def __init__(self) -> None:
        self.reported = np.zeros(0, dtype=np.int64)  # running + waiting, from heartbeats
        self.in_flight = np.zeros(0, dtype=np.int64)
        self.backlog = np.zeros(0, dtype=np.int64)
        self.kv_usage = np.zeros(0, dtype=np.float64)
        self.last_seen = np.zeros(0, dtype=np.float64)
        self.static = np.zeros(0, dtype=bool)
        self.max_running = np.zeros(0, dtype=np.int64)  # 0: the router's default
        self.block_size = np.zeros(0, dtype=np.int64)
        self._free: list[int] = []
        self._used = 0

    def take(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self.reported):
            grown = max(64, 2 * self._used)
            for name in _COLUMNS:
                column = getattr(self, name)
                setattr(self, name, np.concatenate([column, np.zeros(grown - len(column), dtype=column.dtype)]))
        self._used += 1
        return self._used - 1

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    def busy(self, slots: np.ndarray) -> np.ndarray:
        return np.maximum(self.in_flight[slots], self.reported[slots])


class Worker:
    """One engine as routing sees it; its load figures live in the board's columns."""

    __slots__ = ("_board", "_load", "index_ready", "info", "slot", "static", "worker_id")

    def __init__(self, info: WorkerInfo, load: Load, last_seen: float, board: Board, static: bool = False) -> None:
        self.info = info
        self.worker_id = info.worker_id  # read by every plugin for every request: not a property
        self.static = static
        self.index_ready = False  # its KV events have been replayed (or it has none to replay)
        self._board = board
        self.slot = board.take()
        board.static[self.slot] = static
        board.max_running[self.slot] = info.max_running_requests
        board.block_size[self.slot] = info.block_size
        self.load, self.last_seen, self.in_flight, self.prefill_backlog = load, last_seen, 0, 0

    @property
    def load(self) -> Load:
        return self._load

    @load.setter
    def load(self, load: Load) -> None:
        self._load = load
        self._board.reported[self.slot] = load.running + load.waiting
        self._board.kv_usage[self.slot] = load.kv_cache_usage

    @property
    def last_seen(self) -> float:
        return float(self._board.last_seen[self.slot])

    @last_seen.setter
    def last_seen(self, when: float) -> None:
        self._board.last_seen[self.slot] = when

    @property
    def in_flight(self) -> int:
        """Requests routed by this router and not completed yet."""
        return int(self._board.in_flight[self.slot])

    @in_flight.setter
    def in_flight(self, n: int) -> None:
        self._board.in_flight[self.slot] = n

    def release(self) -> None:
        """One of this router's requests left the engine: out of the in-flight count, and out of the
        last heartbeat's, which still counts it until the next one (routing would see the worker
        fuller than it is and refuse a slot flow control just handed out)."""
        board = self._board
        board.in_flight[self.slot] = max(0, board.in_flight[self.slot] - 1)
        board.reported[self.slot] = max(0, board.reported[self.slot] - 1)

    @property
    def prefill_backlog(self) -> int:
        """Uncached prompt tokens of those requests, until their first token."""
        return int(self._board.backlog[self.slot])

    @prefill_backlog.setter
    def prefill_backlog(self, n: int) -> None:
        self._board.backlog[self.slot] = n

    def busy(self) -> int:
        """Requests on the worker. Heartbeats see other routers' requests but lag; this router's own
        count is current: take the larger."""
        return int(max(self._board.in_flight[self.slot], self._board.reported[self.slot]))


@dataclass(frozen=True, slots=True)
class Group:
    """The workers of one (model, role) pool, in worker id order, as of one registry generation."""

    key: tuple[int, str, Role]
    workers: list[Worker]
    slots: np.ndarray  # the workers' board slots, same order
    position: dict[str, int]


class Registry:
    def __init__(self, lease_s: float, forget_after_s: float, clock: Callable[[], float]) -> None:
        self.workers: dict[str, Worker] = {}
        self.board = Board()
        self.lease_s = lease_s
        self.generation = 0  # changes whenever a worker joins, leaves or changes its spec
        self._forget_after_s = forget_after_s
        self._clock = clock
        self._groups: dict[tuple[str, Role], Group] = {}

    def register(self, info: WorkerInfo, load: Load, *, static: bool = False) -> bool:
        """True when the worker is new or its spec changed (its KV index must start over)."""
        known = self.workers.get(info.worker_id)
        now = self._clock()
        if known is not None and known.info == info:
            known.load, known.last_seen = load, now
            return False
        worker = Worker(info, load, now, self.board, static=static)
        if known is not None:  # requests routed to it before the change are still on it
            worker.in_flight, worker.prefill_backlog = known.in_flight, known.prefill_backlog
            self.board.give_back(known.slot)
        self.workers[info.worker_id] = worker
        self._changed()
        return True

    def heartbeat(self, worker_id: str, load: Load) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFoundError(f"worker {worker_id!r} is not registered; register again", code="unknown_worker")
        worker.load, worker.last_seen = load, self._clock()

    def deregister(self, worker_id: str) -> bool:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return False
        self.board.give_back(worker.slot)
        self._changed()
        return True

    def healthy(self, worker: Worker, now: float) -> bool:
        return worker.static or now - worker.last_seen <= self.lease_s

    def forget_silent(self) -> list[str]:
        """Drops workers silent for forget_after_s (their replica is gone) and returns their ids."""
        now = self._clock()
        gone = [w.worker_id for w in self.workers.values() if not w.static and now - w.last_seen > self._forget_after_s]
        for worker_id in gone:
            self.deregister(worker_id)
        return gone

    def group(self, model: str, role: Role) -> Group:
        group = self._groups.get((model, role))
        if group is None or group.key[0] != self.generation:
            members = sorted(
                (w for w in self.workers.values() if w.info.model == model and w.info.role == role),
                key=lambda w: w.worker_id,
            )
            slots = np.array([w.slot for w in members], dtype=np.intp)
            group = Group(
                (self.generation, model, role), members, slots, {w.worker_id: i for i, w in enumerate(members)}
            )
            self._groups[model, role] = group
        return group

    def _changed(self) -> None:
        self.generation += 1
        if len(self._groups) > 64:  # models come and go: drop stale pools now and then
            self._groups.clear()
