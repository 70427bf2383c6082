"""Load generators for the Route benchmark, on gRPC's own threads: a Python asyncio client spends
about as much CPU per call as the router does, which on a small machine measures the client.

Requests are serialized up front; replies are decoded only for the ids that match them. Each Route
is followed by its Complete, as the ingress does, so the router carries both. Requests speak the
current protocol and name a tenant, so a router that loads tenants admits each one (and its
Complete settles the admission). As the ingress's client does, both travel on one Session stream
where the router has it (v3), and as two unary calls where it does not (today's router before v3).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from glmserve.router import convert
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.status import status_code

ROUTE = "/glmserve.router.v1.Router/Route"
COMPLETE = "/glmserve.router.v1.Router/Complete"
SESSION = "/glmserve.router.v1.Router/Session"
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 2**26), ("grpc.max_receive_message_length", 2**26)]
Done = Callable[[bytes], None]


class StreamCalls:
    """Calls on one bidirectional stream from many threads: each message carries an id that its
    reply (read by `reply_id`) echoes."""

    def __init__(self, channel: grpc.Channel, method: str, reply_id: Callable[[bytes], int]) -> None:
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._waiting: dict[int, Done] = {}
        self._lock = threading.Lock()
        self._reply_id = reply_id
        self._replies = channel.stream_stream(method)(iter(self._outbox.get, None))
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        for reply in self._replies:
            with self._lock:
                done = self._waiting.pop(self._reply_id(reply))
            done(reply)

    def send(self, call_id: int, message: bytes, done: Done) -> None:
        with self._lock:
            self._waiting[call_id] = done
        self._outbox.put(message)

    def call(self, call_id: int, message: bytes) -> bytes:
        replied = threading.Event()
        reply: list[bytes] = []
        self.send(call_id, message, lambda r: (reply.append(r), replied.set()))
        replied.wait()
        return reply[0]

    def close(self) -> None:
        self._outbox.put(None)
        self._reader.join()


def run_threads(caller: Callable[[int], None], count: int) -> float:
    """Runs caller(0) ... caller(count - 1) on threads of their own; the seconds until all returned."""
    started = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def _reply_id(reply: bytes) -> int:
    return int(pb.SessionReply.FromString(reply).id)


def _failure(reply: bytes) -> str | None:
    """The status code name of a Session reply that is a failed call; None when it succeeded."""
    parsed = pb.SessionReply.FromString(reply)
    if parsed.WhichOneof("result") != "status":
        return None
    return status_code(parsed.status.code).name


def has_session(port: int) -> bool:
    """Whether the router serves Session: a Complete of a request it never saw, on a stream."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        probe = pb.SessionMessage(id=1, complete=pb.CompleteRequest(request_id="probe"))
        replies = channel.stream_stream(SESSION)(iter([probe.SerializeToString()]), timeout=10)
        try:
            list(replies)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return False
            raise
    return True


class _Payload:
    """One request's Route and Complete, as unary messages and as Session messages (ids 2i, 2i + 1)."""

    __slots__ = ("complete", "complete_id", "route", "route_id", "session_complete", "session_route")

    def __init__(self, i: int, route: pb.RouteRequest, complete: pb.CompleteRequest) -> None:
        self.route, self.complete = route.SerializeToString(), complete.SerializeToString()
        self.route_id, self.complete_id = 2 * i, 2 * i + 1
        self.session_route = pb.SessionMessage(id=self.route_id, route=route).SerializeToString()
        self.session_complete = pb.SessionMessage(id=self.complete_id, complete=complete).SerializeToString()


def _payloads(prompts: list[np.ndarray], prefix: str, model: str, tenants: list[str]) -> list[_Payload]:
    return [
        _Payload(
            i,
            pb.RouteRequest(
                request_id=f"{prefix}{i}",
                tenant=tenants[i % len(tenants)],
                model=model,
                prompt_token_ids=p.tolist(),
                protocol_version=convert.PROTOCOL_VERSION,
            ),
            pb.CompleteRequest(request_id=f"{prefix}{i}", prompt_tokens=len(p), outcome=pb.OUTCOME_OK),
        )
        for i, p in enumerate(prompts)
    ]


def open_loop(
    port: int, prompts: list[np.ndarray], rate: float, model: str, tenants: list[str]
) -> tuple[list[float], float, list[str]]:
    """Sends request i at i / rate seconds whatever the replies; returns the latency of each Route
    that succeeded, the rate actually sent, and the status codes of the ones that failed."""
    payloads = _payloads(prompts, "r", model, tenants)
    latencies: list[float] = [0.0] * len(prompts)
    failures: list[str] = []
    pending = threading.Semaphore(0)
    session = has_session(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL_OPTIONS) as channel:
        route = channel.unary_unary(ROUTE)
        complete = channel.unary_unary(COMPLETE)
        stream = StreamCalls(channel, SESSION, _reply_id) if session else None

        def routed(i: int, sent: float, failure: str | None) -> None:
            if failure is not None:
                failures.append(failure)
                pending.release()
                return
            latencies[i] = time.perf_counter() - sent
            if stream is not None:
                stream.send(payloads[i].complete_id, payloads[i].session_complete, lambda _: pending.release())
            else:
                complete.future(payloads[i].complete, timeout=30).add_done_callback(lambda _: pending.release())

        def unary_routed(i: int, sent: float, future: grpc.Future) -> None:
            routed(i, sent, None if future.exception() is None else future.code().name)

        start = time.perf_counter()
        for i, payload in enumerate(payloads):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            if stream is not None:
                stream.send(
                    payload.route_id, payload.session_route, lambda r, i=i, sent=sent: routed(i, sent, _failure(r))
                )
            else:
                route.future(payload.route, timeout=30).add_done_callback(
                    lambda f, i=i, sent=sent: unary_routed(i, sent, f)
                )
        sent_rate = len(payloads) / (time.perf_counter() - start)
        for _ in payloads:
            pending.acquire()
        if stream is not None:
            stream.close()
    return [x for x in latencies if x], sent_rate, failures


def closed_loop(
    port: int, prompts: list[np.ndarray], *, callers: int, seconds: float, model: str, tenants: list[str]
) -> float:
    """Route + Complete pairs per second with `callers` threads calling back to back."""
    payloads = _payloads(prompts, "c", model, tenants)
    assert len(payloads) >= callers  # a payload's Session ids are in flight once at a time
    done = [0] * callers
    session = has_session(port)
    deadline = time.perf_counter() + seconds
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL_OPTIONS) as channel:
        route = channel.unary_unary(ROUTE)
        complete = channel.unary_unary(COMPLETE)
        stream = StreamCalls(channel, SESSION, _reply_id) if session else None

        def caller(k: int) -> None:
            for i in itertools.count(k, callers):
                if time.perf_counter() >= deadline:
                    return
                p = payloads[i % len(payloads)]
                if stream is not None:
                    for call_id, message in ((p.route_id, p.session_route), (p.complete_id, p.session_complete)):
                        if (failure := _failure(stream.call(call_id, message))) is not None:
                            raise RuntimeError(f"a call on the session failed: {failure}")
                else:
                    route(p.route, timeout=30)
                    complete(p.complete, timeout=30)
                done[k] += 1

        elapsed = run_threads(caller, callers)
        if stream is not None:
            stream.close()
    return sum(done) / elapsed
