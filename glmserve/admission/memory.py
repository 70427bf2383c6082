"""The in-process limits store: the Lua script of `scripts.py`, line for line, in Python.

Floating-point operations happen in the same order as in Lua, on the same IEEE doubles, so both
stores reach bit-identical decisions for the same sequence of calls and clock readings.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from glmserve.admission.model import DIMENSION_CODES, US_PER_MINUTE, Bucket, Cost, Decision, Rates


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


@dataclass(slots=True)
class _Tenant:
    # dimension index -> level at `stamp` (us); absent means full
    levels: dict[int, float] = field(default_factory=dict)
    stamp: int = 0
    leases: dict[str, int] = field(default_factory=dict)  # lease id -> expiry (us)
    # (expiry, lease id), including stale entries of settled or renewed leases: finds the expired
    # leases in O(log n) like Redis's ZREMRANGEBYSCORE, instead of scanning every lease
    expiries: list[tuple[int, str]] = field(default_factory=list)

    def drop_expired(self, now: int) -> None:
        while self.expiries and self.expiries[0][0] <= now:
            expiry, lease_id = heapq.heappop(self.expiries)
            if self.leases.get(lease_id) == expiry:
                del self.leases[lease_id]

    def lease(self, lease_id: str, expiry: int) -> None:
        self.leases[lease_id] = expiry
        heapq.heappush(self.expiries, (expiry, lease_id))


def _limits(rates: Rates) -> tuple[int, int, int]:
    return rates.requests_per_minute, rates.input_tokens_per_minute, rates.output_tokens_per_minute


def _level(state: _Tenant, d: int, limit: int, now: int) -> float:
    stored = state.levels.get(d)
    if stored is None:
        return float(limit)
    elapsed = now - state.stamp
    elapsed = max(elapsed, 0)  # a clock that stepped back refills nothing
    level = stored + elapsed * (limit / US_PER_MINUTE)
    return min(level, float(limit))


def _bucket(level: float | None, limit: int) -> Bucket:
    if level is None or limit == 0:
        return Bucket(limit, 0, 0)
    return Bucket(limit, math.floor(level), math.ceil((limit - level) / (limit / US_PER_MINUTE)))


class MemoryBackend:
    """One process's buckets and leases. Thread-safe; every call is one atomic step."""

    def __init__(self, clock: Callable[[], int] = monotonic_us) -> None:
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._lock = threading.Lock()

    async def admit(self, tenant_id: str, rates: Rates, cost: Cost, lease_id: str, lease_ttl_us: int) -> Decision:
        with self._lock:
            return self._admit(tenant_id, rates, cost, lease_id, lease_ttl_us)

    async def settle(self, tenant_id: str, rates: Rates, lease_id: str, refund: Cost) -> bool:
        with self._lock:
            return self._settle(tenant_id, rates, lease_id, refund)

    async def renew(self, tenant_id: str, lease_id: str, lease_ttl_us: int) -> bool:
        with self._lock:
            return self._renew(tenant_id, lease_id, lease_ttl_us)

    async def aclose(self) -> None:
        return None

    def _admit(self, tenant_id: str, rates: Rates, cost: Cost, lease_id: str, lease_ttl_us: int) -> Decision:
        now = self._clock()
        state = self._tenants.setdefault(tenant_id, _Tenant())
        limits = _limits(rates)
        need = (1, cost.input_tokens, cost.output_tokens)
        levels: list[float | None] = [None, None, None]
        code, wait = 0, 0
        for d, limit in enumerate(limits):
            if limit > 0:
                level = _level(state, d, limit, now)
                levels[d] = level
                if level < need[d]:
                    w = math.ceil((need[d] - level) / (limit / US_PER_MINUTE))
                    if w > wait:
                        code, wait = d + 1, w
        state.drop_expired(now)
        in_flight = len(state.leases)
        replay = lease_id in state.leases  # a retried admission that was applied: take nothing twice
        if replay:
            code, wait = 0, 0
        if code == 0 and not replay and 0 < rates.max_concurrent_requests <= in_flight:
            code = 4
        if code == 0 and not replay:
            for d, before in enumerate(levels):
                if before is not None:  # limited dimensions only
                    levels[d] = before - need[d]
            self._store(state, limits, levels, now)
            state.lease(lease_id, now + lease_ttl_us)
            in_flight += 1
        return Decision(
            allowed=code == 0,
            limited_by=DIMENSION_CODES[code],
            retry_after_us=wait,
            requests=_bucket(levels[0], limits[0]),
            input_tokens=_bucket(levels[1], limits[1]),
            output_tokens=_bucket(levels[2], limits[2]),
            in_flight=in_flight,
            now_us=now,
        )

    def _settle(self, tenant_id: str, rates: Rates, lease_id: str, refund: Cost) -> bool:
        now = self._clock()
        state = self._tenants.get(tenant_id)
        if state is None or state.leases.pop(lease_id, None) is None:
            return False
        limits = _limits(rates)
        adjust = (0, refund.input_tokens, refund.output_tokens)
        levels: list[float | None] = [None, None, None]
        for d, limit in enumerate(limits):
            if limit > 0:
                level = _level(state, d, limit, now) + adjust[d]
                levels[d] = min(level, float(limit))
        self._store(state, limits, levels, now)
        return True

    def _renew(self, tenant_id: str, lease_id: str, lease_ttl_us: int) -> bool:
        now = self._clock()
        state = self._tenants.get(tenant_id)
        expiry = None if state is None else state.leases.get(lease_id)
        if state is None or expiry is None:
            return False
        if expiry <= now:
            del state.leases[lease_id]
            return False
        state.lease(lease_id, now + lease_ttl_us)
        return True

    @staticmethod
    def _store(state: _Tenant, limits: tuple[int, int, int], levels: list[float | None], now: int) -> None:
        state.levels = {d: level for d, level in enumerate(levels) if limits[d] > 0 and level is not None}
        state.stamp = now
