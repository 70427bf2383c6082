"""Load generators for the Route benchmark, on gRPC's own threads: a Python asyncio client spends
about as much CPU per call as the router does, which on a small machine measures the client.

Requests are serialized up front; replies are not decoded. Each Route is followed by its Complete,
as the ingress does, so the router carries both. Requests speak protocol v2 and name a tenant, so a
router that loads tenants admits each one (and its Complete settles the admission).
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from glmserve.router import convert
from glmserve.router.proto import router_pb2 as pb

ROUTE = "/glmserve.router.v1.Router/Route"
COMPLETE = "/glmserve.router.v1.Router/Complete"
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 2**26), ("grpc.max_receive_message_length", 2**26)]


def _payloads(prompts: list[np.ndarray], prefix: str, model: str, tenants: list[str]) -> list[tuple[bytes, bytes]]:
    return [
        (
            pb.RouteRequest(
                request_id=f"{prefix}{i}",
                tenant=tenants[i % len(tenants)],
                model=model,
                prompt_token_ids=p.tolist(),
                protocol_version=convert.PROTOCOL_VERSION,
            ).SerializeToString(),
            pb.CompleteRequest(
                request_id=f"{prefix}{i}", prompt_tokens=len(p), outcome=pb.OUTCOME_OK
            ).SerializeToString(),
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
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL_OPTIONS) as channel:
        route = channel.unary_unary(ROUTE)
        complete = channel.unary_unary(COMPLETE)

        def routed(i: int, sent: float, future: grpc.Future) -> None:
            if future.exception() is None:
                latencies[i] = time.perf_counter() - sent
                complete.future(payloads[i][1], timeout=30).add_done_callback(lambda _: pending.release())
            else:
                failures.append(future.code().name)
                pending.release()

        start = time.perf_counter()
        for i, (request, _) in enumerate(payloads):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            route.future(request, timeout=30).add_done_callback(lambda f, i=i, sent=sent: routed(i, sent, f))
        sent_rate = len(payloads) / (time.perf_counter() - start)
        for _ in payloads:
            pending.acquire()
    return [x for x in latencies if x], sent_rate, failures


def closed_loop(
    port: int, prompts: list[np.ndarray], *, callers: int, seconds: float, model: str, tenants: list[str]
) -> float:
    """Route + Complete pairs per second with `callers` threads calling back to back."""
    payloads = _payloads(prompts, "c", model, tenants)
    done = [0] * callers
    deadline = time.perf_counter() + seconds
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL_OPTIONS) as channel:
        route = channel.unary_unary(ROUTE)
        complete = channel.unary_unary(COMPLETE)

        def caller(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                request, completion = payloads[i % len(payloads)]
                route(request, timeout=30)
                complete(completion, timeout=30)
                done[k] += 1
                i += callers

        started = time.perf_counter()
        threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(done) / (time.perf_counter() - started)
