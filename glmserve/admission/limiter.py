"""Admission control for one ingress/router process: plan checks, the shared store, outages.

    admission = await limiter.admit(tenant, model=m, prompt_tokens=p, max_tokens=body.max_tokens)
    if not admission.allowed:
        -> 429 with admission.error() and admission.headers()
    async with limiter.settling(admission) as usage:   # or call limiter.settle() in a finally
        ... serve, setting usage.output_tokens (and usage.input_tokens if the prompt count changed)

A lease stays alive while its admission is open (renewed in the background, one batched call per
interval) and expires by itself if this process dies or drops the admission without settling.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from glmserve.admission.backend import LimitsBackend, StoreUnavailable
from glmserve.admission.memory import MemoryBackend
from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.model import US_PER_S, Bucket, Cost, Decision, Rates
from glmserve.admission.outcome import Admission, Source
from glmserve.admission.redis_backend import RedisBackend
from glmserve.admission.request import budget
from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import OverloadedError

log = logging.getLogger(__name__)

_NO_LIMITS = Bucket(0, 0, 0)


class OutagePolicy(StrEnum):
    FAIL_OPEN = "fail-open"  # keep serving on local, approximate limits
    FAIL_CLOSED = "fail-closed"  # refuse with 503 until the store answers again


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    outage: OutagePolicy = OutagePolicy.FAIL_CLOSED
    # During an outage each replica enforces this share of every limit on its own (1/replicas keeps
    # the total near the plan's; 1.0 lets every replica grant the full plan).
    fail_open_share: float = 1.0
    store_retry_s: float = 1.0  # after a store failure, how long to apply the policy before trying again
    lease_ttl_s: float = 30.0  # a crashed process's slots come back after this long
    max_request_s: float = 3600.0  # leases are not renewed beyond this (a forgotten admission)
    concurrency_retry_after_s: float = 1.0  # Retry-After when only concurrency refused

    def __post_init__(self) -> None:
        if not 0 < self.fail_open_share <= 1:
            raise ValueError(f"fail_open_share must be in (0, 1], got {self.fail_open_share}")
        if self.lease_ttl_s <= 0 or self.store_retry_s <= 0:
            raise ValueError("lease_ttl_s and store_retry_s must be positive")


@dataclass(slots=True)
class Usage:
    """Tokens a request actually used, filled in while it runs (None: as admitted)."""

    output_tokens: int = 0
    input_tokens: int | None = None


class Limiter:
    def __init__(
        self,
        store: LimitsBackend,
        config: LimiterConfig | None = None,
        *,
        metrics: AdmissionMetrics | None = None,
        local: MemoryBackend | None = None,
    ) -> None:
        """`store`: RedisBackend (shared) or MemoryBackend (embedded, one process). `local`: the
        fail-open fallback (tests pass one with a test clock)."""
        self._store = store
        self._config = config or LimiterConfig()
        self._metrics = metrics or AdmissionMetrics()
        self._local = local or MemoryBackend()
        self._ttl_us = round(self._config.lease_ttl_s * US_PER_S)
        self._store_ok = True
        self._retry_at = 0.0
        # open admissions, held weakly: one the caller dropped without settling stops being renewed
        self._open: weakref.WeakValueDictionary[str, Admission] = weakref.WeakValueDictionary()
        self._renewer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        # lease ids: unique across replicas by a random prefix, cheap by a counter (no syscall each)
        self._lease_prefix = os.urandom(8).hex() + "-"
        self._lease_numbers = itertools.count()

    @classmethod
    def from_settings(
        cls, redis_url: str | None, outage: str, fail_open_share: float, *, metrics: AdmissionMetrics
    ) -> Limiter:
        """Limits in the Redis at `redis_url`, shared by every router and ingress using it, or (None)
        in this process's memory; `outage` and `fail_open_share` as LimiterConfig's."""
        store = RedisBackend.from_url(redis_url) if redis_url else MemoryBackend()
        config = LimiterConfig(outage=OutagePolicy(outage), fail_open_share=fail_open_share)
        return cls(store, config, metrics=metrics)

    @property
    def metrics(self) -> AdmissionMetrics:
        return self._metrics

    @property
    def store_available(self) -> bool:
        return self._store_ok

    async def admit(
        self, tenant: ResolvedTenant, *, model: str, prompt_tokens: int, max_tokens: int | None = None
    ) -> Admission:
        """Decide one request: InvalidRequestError (400) or PermissionDeniedError (403) if its plan can
        never serve it, OverloadedError (503) if the store is down and the policy is fail-closed, else an
        Admission, allowed or not. One store round trip."""
        need = budget(tenant, model, prompt_tokens, max_tokens)
        rates = tenant.limits.rates
        lease_id = f"{self._lease_prefix}{next(self._lease_numbers):x}"
        started = time.perf_counter()
        source: Source
        if rates.unlimited:
            decision, source = Decision(True, None, 0, _NO_LIMITS, _NO_LIMITS, _NO_LIMITS, 0, 0), "none"
        else:
            try:
                decision, source, rates = await self._decide(tenant.id, rates, need.cost, lease_id)
            except OverloadedError:
                self._metrics.decided(tenant.plan, "unavailable", "none")
                raise
            self._metrics.timed(source, time.perf_counter() - started)
        admission = Admission(
            tenant.id,
            tenant.plan,
            lease_id,
            need.cost,
            rates,
            decision,
            need.engine_max_tokens,
            source,
            time.monotonic(),
            self._config.concurrency_retry_after_s,
        )
        dimension = decision.limited_by or "none"
        self._metrics.decided(tenant.plan, "allowed" if decision.allowed else "limited", dimension)
        if decision.allowed and source != "none":
            self._open[lease_id] = admission
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())
        return admission

    def settle(
        self, admission: Admission, *, output_tokens: int, input_tokens: int | None = None
    ) -> asyncio.Task[bool]:
        """End an admitted request: refund the unused reservation or charge the overrun, and free its
        slot. Exactly once per admission (later calls do nothing), retried through store outages
        until its lease would have expired. Not a coroutine: it takes effect even when called from a
        cancelled task (a client disconnect), so there is no need to await the returned task, which
        says whether this call settled the admission."""
        loop = asyncio.get_running_loop()
        if self._open.pop(admission.lease_id, None) is None:  # refused, unlimited or settled already
            task = loop.create_task(_false())
        else:
            cost = admission.cost
            used_in = cost.input_tokens if input_tokens is None else input_tokens
            refund = Cost(cost.input_tokens - used_in, cost.output_tokens - output_tokens)
            task = loop.create_task(self._settle(admission, refund))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @asynccontextmanager
    async def settling(self, admission: Admission) -> AsyncIterator[Usage]:
        """Settles on leaving the block however it is left (success, error, cancellation), with the
        usage recorded so far: a request that failed before any output is refunded in full."""
        usage = Usage()
        try:
            yield usage
        finally:
            self.settle(admission, output_tokens=usage.output_tokens, input_tokens=usage.input_tokens)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._config.store_retry_s)
        await self._store.aclose()

    # -- internals --------------------------------------------------------------------------

    async def _decide(self, tenant_id: str, rates: Rates, cost: Cost, lease_id: str) -> tuple[Decision, Source, Rates]:
        if self._store_ok or time.monotonic() >= self._retry_at:
            try:
                decision = await self._store.admit(tenant_id, rates, cost, lease_id, self._ttl_us)
            except StoreUnavailable as exc:
                self._store_failed(exc)
            else:
                self._store_answered()
                return decision, "store", rates
        if self._config.outage is OutagePolicy.FAIL_CLOSED:
            raise OverloadedError(
                "Rate limits cannot be checked right now (the limits store is unreachable). Please retry shortly.",
                code="limits_store_unavailable",
                retry_after_s=self._config.store_retry_s,
            )
        local = rates.scaled(self._config.fail_open_share)
        self._metrics.fail_open.inc()
        return await self._local.admit(tenant_id, local, cost, lease_id, self._ttl_us), "local", local

    def _backend(self, admission: Admission) -> LimitsBackend:
        return self._store if admission.source == "store" else self._local

    async def _settle(self, admission: Admission, refund: Cost) -> bool:
        backend = self._backend(admission)
        deadline = time.monotonic() + self._config.lease_ttl_s
        deferred = False
        while True:
            try:
                settled = await backend.settle(admission.tenant_id, admission.rates, admission.lease_id, refund)
            except StoreUnavailable as exc:
                self._store_failed(exc)
                if time.monotonic() >= deadline:
                    log.warning("settlement of a %s request lost: the limits store stayed down", admission.plan)
                    self._metrics.settlements.labels("lost").inc()
                    return False
                if not deferred:
                    self._metrics.settlements.labels("deferred").inc()
                    deferred = True
                await asyncio.sleep(self._config.store_retry_s)
                continue
            if backend is self._store:
                self._store_answered()
            self._metrics.settlements.labels("settled" if settled else "duplicate").inc()
            return settled

    async def _renew_leases(self) -> None:
        interval = self._config.lease_ttl_s / 3
        while self._open:
            await asyncio.sleep(interval)
            now = time.monotonic()
            due = [a for a in list(self._open.values()) if now - a.admitted_at < self._config.max_request_s]
            results = await asyncio.gather(
                *(self._backend(a).renew(a.tenant_id, a.lease_id, self._ttl_us) for a in due), return_exceptions=True
            )
            for admission, renewed in zip(due, results, strict=True):
                if renewed is False and self._open.pop(admission.lease_id, None) is not None:  # not settled meanwhile
                    # the store dropped the lease, so settling it would find nothing either
                    self._metrics.leases_lost.inc()
                    log.warning("a %s request outlived its concurrency lease", admission.plan)
                elif isinstance(renewed, BaseException) and not isinstance(renewed, StoreUnavailable):
                    log.error("renewing leases failed: %r", renewed)

    def _store_failed(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self._config.store_retry_s
        if self._store_ok:
            self._store_ok = False
            self._metrics.store_up.set(0)
            log.warning("limits store unreachable (%s); %s until it answers", exc, self._config.outage.value)

    def _store_answered(self) -> None:
        if not self._store_ok:
            self._store_ok = True
            self._metrics.store_up.set(1)
            log.warning("limits store reachable again")


async def _false() -> bool:
    return False
