"""Each engine's KV-event stream into the index: subscribe, replay what was missed, notice restarts.

vLLM's publisher numbers its batches; it keeps the last `buffer_steps` of them and resends them
from any sequence number asked for on its replay (ROUTER) socket. So on (re)start the router asks
for everything from 0, which rebuilds what the index knew, and on a gap in the live stream (the
slow-joiner window, or batches the publisher dropped past its high-water mark) it asks for the
missing ones. A sequence number going backwards with a newer timestamp is an engine restart: its
cache is empty, so its blocks leave the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import zmq
import zmq.asyncio

from glmserve.router.events import EventBatch, MalformedBatch, decode_batch, decode_seq
from glmserve.router.metrics import GapOutcome
from glmserve.router.router import Router
from glmserve.router.types import WorkerInfo

log = logging.getLogger("glmserve.router.events")
_END_OF_REPLAY = -1


class EngineFeed:
    def __init__(self, router: Router, info: WorkerInfo, zmq_context: zmq.asyncio.Context, replay_timeout_s: float):
        self._router = router
        self._info = info
        self._zmq = zmq_context
        self._replay_timeout_s = replay_timeout_s
        self._next_seq: int | None = None
        self._last_ts = -math.inf

    async def run(self) -> None:
        info = self._info
        sub = self._zmq.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, info.kv_events_topic.encode())
        sub.connect(info.kv_events_endpoint)
        try:
            if info.kv_replay_endpoint:
                await self._replay(0)
            self._router.set_index_ready(info.worker_id, True)
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 3:
                    self._malformed(f"{len(frames)} frames, not 3")
                    continue
                try:
                    batch = decode_batch(frames[1], frames[2])
                except MalformedBatch as exc:
                    self._malformed(str(exc))
                    continue
                await self._live(batch)
        finally:
            sub.close(linger=0)

    async def _live(self, batch: EventBatch) -> None:
        expected = self._next_seq
        if expected is not None and batch.seq < expected:
            if batch.ts <= self._last_ts:
                return  # already applied (replay and live stream overlap)
            log.warning(
                "engine %s restarted (seq %d after %d): dropping its index", self._info.worker_id, batch.seq, expected
            )
            self._gap("engine_restart")
            self._router.reset_index(self._info.worker_id)
            self._next_seq = expected = 0
        if expected is not None and batch.seq > expected and self._info.kv_replay_endpoint:
            self._gap("replayed")
            await self._replay(expected)
        elif expected is not None and batch.seq > expected:
            self._gap("lost")
        self._apply(batch)

    def _apply(self, batch: EventBatch) -> None:
        if self._next_seq is not None and batch.seq < self._next_seq:
            return
        self._router.apply_events(self._info.worker_id, batch.events)
        self._next_seq = batch.seq + 1
        self._last_ts = max(self._last_ts, batch.ts)

    async def _replay(self, start: int) -> None:
        """Applies the engine's buffered batches from `start` on; gives up after replay_timeout_s
        of silence (the index then lacks what the engine stored before, until it is touched again)."""
        sock = self._zmq.socket(zmq.DEALER)
        sock.connect(self._info.kv_replay_endpoint)
        try:
            await sock.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                frames = await asyncio.wait_for(sock.recv_multipart(), self._replay_timeout_s)
                if len(frames) != 4:
                    self._malformed(f"replay reply of {len(frames)} frames, not 4")
                    continue
                if decode_seq(frames[2]) == _END_OF_REPLAY:
                    return
                self._apply(decode_batch(frames[2], frames[3]))
        except TimeoutError:
            log.warning("engine %s: no replay from %s", self._info.worker_id, self._info.kv_replay_endpoint)
            self._gap("lost")
        except MalformedBatch as exc:
            self._malformed(str(exc))
        finally:
            sock.close(linger=0)

    def _gap(self, outcome: GapOutcome) -> None:
        self._router.metrics.kv_event_gaps.labels(outcome).inc()

    def _malformed(self, why: str) -> None:
        log.warning("engine %s: malformed KV event message: %s", self._info.worker_id, why)
        self._router.metrics.kv_events.labels("malformed").inc()


class Subscriptions:
    """One EngineFeed task per registered worker with an events endpoint."""

    def __init__(self, router: Router, replay_timeout_s: float) -> None:
        self._router = router
        self._replay_timeout_s = replay_timeout_s
        self._zmq = zmq.asyncio.Context()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def follow(self, info: WorkerInfo) -> None:
        """(Re)starts following the worker's events; its index was reset by the registration."""
        self.stop(info.worker_id)
        if info.kv_events_endpoint:
            feed = EngineFeed(self._router, info, self._zmq, self._replay_timeout_s)
            task = asyncio.get_running_loop().create_task(feed.run(), name=f"kv-events:{info.worker_id}")
            task.add_done_callback(_log_crash)
            self._tasks[info.worker_id] = task

    def stop(self, worker_id: str) -> None:
        task = self._tasks.pop(worker_id, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for worker_id in list(self._tasks):
            self.stop(worker_id)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._zmq.term()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("KV event feed %s stopped", task.get_name(), exc_info=task.exception())
