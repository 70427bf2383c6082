"""A ZMQ KV-event publisher that behaves like vLLM's ZmqEventPublisher: a PUB socket sending
(topic, seq, payload), a ROUTER replay socket answering "from seq N" with the buffered batches and
an end marker, all socket work on one background thread (ZMQ sockets are not thread-safe)."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq

from benchmarks.sim.vllm_events import encode_batch

_END_SEQ = (-1).to_bytes(8, "big", signed=True)


class EnginePublisher:
    def __init__(
        self,
        endpoint: str | None = None,
        replay_endpoint: str | None = None,
        topic: str = "",
        buffer_steps: int = 10_000,
    ) -> None:
        """Binds the given endpoints, or free ports on 127.0.0.1."""
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._replay = self._ctx.socket(zmq.ROUTER)
        self.endpoint = _bind(self._pub, endpoint)
        self.replay_endpoint = _bind(self._replay, replay_endpoint)
        self.topic = topic
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._queue: queue.Queue[tuple[bytes, bool] | None] = queue.Queue()
        self._seq = 0
        self._thread = threading.Thread(target=self._serve, daemon=True, name="kv-publisher")
        self._thread.start()

    def publish(self, events: Sequence[dict[str, Any]], *, drop: bool = False) -> int:
        """Queues one batch and returns its sequence number; `drop` numbers and buffers it without
        sending it live, as the publisher does past a slow subscriber's high-water mark."""
        self._queue.put((encode_batch(time.time(), events), drop))
        self._seq += 1
        return self._seq - 1

    def flush(self, timeout_s: float = 5.0) -> None:
        """Waits until every queued batch has been sent."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.001)

    def _serve(self) -> None:
        seq = 0
        while True:
            while self._replay.poll(0):
                self._answer_replay()
            try:
                item = self._queue.get(timeout=0.01)
            except queue.Empty:
                continue
            if item is None:
                self._queue.task_done()
                break
            payload, drop = item
            if not drop:
                self._pub.send_multipart((self.topic.encode(), seq.to_bytes(8, "big"), payload))
            self._buffer.append((seq, payload))
            seq += 1
            self._queue.task_done()
        self._pub.close(linger=0)
        self._replay.close(linger=0)

    def _answer_replay(self) -> None:
        client, _, start = self._replay.recv_multipart()
        first = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= first:
                self._replay.send_multipart((client, b"", self.topic.encode(), seq.to_bytes(8, "big"), payload))
        self._replay.send_multipart((client, b"", b"", _END_SEQ, b""))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._ctx.term()


def _bind(sock: zmq.Socket[bytes], endpoint: str | None) -> str:
    if endpoint is None:
        return f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
    sock.bind(endpoint)
    return endpoint
