"""Many processes (Redis) or threads (in-memory) hammering one tenant never get more than the plan."""

from __future__ import annotations

import functools
import math
import multiprocessing
import threading
from collections.abc import Callable
from typing import Any

from glmserve.admission.backend import LimitsBackend
from glmserve.admission.memory import MemoryBackend, monotonic_us
from glmserve.admission.redis_backend import RedisBackend
from tests.admission.hammer import Load, hammer

WORKERS = 8
RPM, CONCURRENT, REAL_RPM = 200, 5, 120
# per worker 96 attempts (768 in all for 200 requests); then 1.5 s at RPM 120: a request each 0.5 s
LOAD = Load(RPM, CONCURRENT, attempts=96, real_rpm=REAL_RPM, real_seconds=1.5)


def redis_store(url: str, clock: Callable[[], int] | None) -> LimitsBackend:
    return RedisBackend.from_url(url, clock=clock)


def check(results: list[dict[str, Any]]) -> None:
    assert sum(r["rpm"] for r in results) == RPM
    assert sum(r["concurrent"] for r in results) == CONCURRENT
    attempts = sorted(a for r in results for a in r["real"])
    assert len(attempts) > 10 * REAL_RPM
    assert attempts[0][1]
    t0 = attempts[0][0]
    per_us = REAL_RPM / 60e6
    # a full bucket, then one request each 60 s / RPM since the first admission, never one more:
    # at every admission, the admissions so far are at most N + refill
    admitted = 0
    for now, allowed in attempts:
        admitted += allowed
        assert admitted <= REAL_RPM + math.floor((now - t0) * per_us + 1e-9), (now - t0, admitted)
    refilled = (attempts[-1][0] - t0) * per_us
    if abs(refilled - round(refilled)) > 1e-3:  # not at a refill boundary: the count is exact
        assert admitted == REAL_RPM + math.floor(refilled)


def test_eight_processes_against_redis(redis_url: str) -> None:
    # fork: a fresh interpreter per worker (spawn) costs seconds on a small machine; each worker
    # builds its own event loop and Redis connection after the fork
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    make_store = functools.partial(redis_store, redis_url)
    args = (make_store, barrier, results, LOAD)
    workers = [ctx.Process(target=hammer, args=args) for _ in range(WORKERS)]
    for w in workers:
        w.start()
    try:
        collected = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    assert all(w.exitcode == 0 for w in workers)
    check(collected)


def test_eight_threads_against_memory() -> None:
    # one store shared by all threads, as one process's fail-open fallback or embedded store is
    stores: dict[bool, MemoryBackend] = {}

    def make_store(clock: Callable[[], int] | None) -> LimitsBackend:
        return stores.setdefault(clock is None, MemoryBackend(clock or monotonic_us))

    barrier = threading.Barrier(WORKERS)
    collected: list[dict[str, Any]] = []

    class Results:
        def put(self, item: dict[str, Any]) -> None:
            collected.append(item)

    args = (make_store, barrier, Results(), LOAD)
    threads = [threading.Thread(target=hammer, args=args) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(collected) == WORKERS
    check(collected)
