"""The shared limits store: Redis, one Lua call per batch of operations.

Operations submitted while a batch is on the wire wait for the next one, so under load a
process sends few large batches and when idle each admission goes alone (one round trip, no
added delay). Settlements and lease renewals have no caller waiting on their answer: they wait up
to `defer_s` for an admission to ride along with, so a request's admit and its settlement cost
one round trip between them instead of two (on a small machine each round trip's syscalls and
wake-ups cost about as much CPU as the rest of the admission). The queue is sent in order, so this
process's next admission always sees its earlier settlements. Every operation is still its own
atomic decision: Redis runs the script whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from glmserve.admission.backend import StoreUnavailable
from glmserve.admission.model import DIMENSION_CODES, Bucket, Cost, Decision, Rates
from glmserve.admission.scripts import BATCH
from glmserve.common.errors import BackendError

log = logging.getLogger(__name__)

# Errors after which the store may work again by itself (restart, failover, network); anything
# else from Redis is a bug or a misconfiguration and must not be papered over by the outage policy.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class _Op:
    keys: tuple[str, str]
    arg: str  # the operation, as the script's ARGV entry
    future: asyncio.Future[tuple[bytes, int]]  # its result and the store's clock
    # an admission whose caller went away (cancelled) is refunded instead of holding its lease:
    # (limits field, lease id, cost)
    orphan: tuple[str, str, Cost] | None = None


def _limits(rates: Rates) -> str:
    return (
        f"{rates.requests_per_minute} {rates.input_tokens_per_minute} "
        f"{rates.output_tokens_per_minute} {rates.max_concurrent_requests}"
    )


class RedisBackend:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "glmserve:rl",
        clock: Callable[[], int] | None = None,
        max_batch: int = 128,
        max_in_flight: int = 4,
        defer_s: float = 0.005,
    ) -> None:
        """`clock` (microseconds) replaces the server's clock: tests only, since replicas' clocks differ.
        `max_in_flight` batches may be on the wire at once (each on its own connection): while Redis
        runs one, this process encodes the next and decodes the last. `defer_s`: how long a settlement
        or renewal may wait for an admission to share its round trip (0: sent at once)."""
        self._client = client
        self._script = client.register_script(BATCH)
        self._prefix = prefix
        self._clock = clock
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._defer_s = defer_s
        self._deferred: asyncio.TimerHandle | None = None
        self._queue: list[_Op] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._keys: dict[str, tuple[str, str]] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5, **kwargs: Any) -> RedisBackend:
        """A client that fails fast (the outage policy decides what then) and reconnects on the next call.
        `timeout_s` bounds a call: a healthy Redis answers in about a millisecond, but a starved
        machine (CPU-throttled pod) can take 100s of ms, which must not count as an outage."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # one immediate retry replaces a connection the server closed (restart); more would
            # only delay the outage policy. Retrying is safe: every operation is idempotent per
            # lease id, so a script that ran but whose reply was lost does not count twice.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        return cls(client, **kwargs)

    async def admit(self, tenant_id: str, rates: Rates, cost: Cost, lease_id: str, lease_ttl_us: int) -> Decision:
        limits = _limits(rates)
        arg = f"a {limits} {cost.input_tokens} {cost.output_tokens} {lease_ttl_us} {lease_id}"
        result, now = await self._submit(tenant_id, arg, orphan=(limits, lease_id, cost))
        r = list(map(int, result.split(b",")))
        return Decision(
            allowed=r[0] == 1,
            limited_by=DIMENSION_CODES[r[1]],
            retry_after_us=r[2],
            requests=Bucket(rates.requests_per_minute, r[3], r[4]),
            input_tokens=Bucket(rates.input_tokens_per_minute, r[5], r[6]),
            output_tokens=Bucket(rates.output_tokens_per_minute, r[7], r[8]),
            in_flight=r[9],
            now_us=now,
        )

    async def settle(self, tenant_id: str, rates: Rates, lease_id: str, refund: Cost) -> bool:
        arg = f"s {_limits(rates)} {refund.input_tokens} {refund.output_tokens} 0 {lease_id}"
        return (await self._submit(tenant_id, arg, urgent=False))[0] == b"1"

    async def renew(self, tenant_id: str, lease_id: str, lease_ttl_us: int) -> bool:
        arg = f"r 0 0 0 0 0 0 {lease_ttl_us} {lease_id}"
        return (await self._submit(tenant_id, arg, urgent=False))[0] == b"1"

    async def aclose(self) -> None:
        self._send()
        if self._flushers:
            await asyncio.wait(self._flushers, timeout=1.0)
        await self._client.aclose()

    # -- batching ----------------------------------------------------------------------------

    def _submit(
        self, tenant_id: str, arg: str, orphan: tuple[str, str, Cost] | None = None, *, urgent: bool = True
    ) -> asyncio.Future[tuple[bytes, int]]:
        """Queue one operation now, before the caller's first await: a cancelled caller (client
        disconnect) cannot keep a settlement from reaching Redis. Not `urgent`: it may wait up to
        defer_s for an urgent one to share its batch."""
        keys = self._keys.get(tenant_id)
        if keys is None:
            tag = f"{self._prefix}:{{{tenant_id}}}"  # the hash tag keeps a tenant's keys in one slot
            keys = self._keys[tenant_id] = (tag + ":b", tag + ":l")
        return self._enqueue(keys, arg, orphan, urgent=urgent)

    def _enqueue(
        self, keys: tuple[str, str], arg: str, orphan: tuple[str, str, Cost] | None = None, *, urgent: bool = True
    ) -> asyncio.Future[tuple[bytes, int]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bytes, int]] = loop.create_future()
        self._queue.append(_Op(keys, arg, future, orphan))
        if urgent or self._defer_s <= 0:
            self._send()
        elif self._deferred is None:
            self._deferred = loop.call_later(self._defer_s, self._send)
        return future

    def _send(self) -> None:
        """Sends what is queued, now (up to max_in_flight batches on the wire)."""
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        if self._queue and len(self._flushers) < self._max_in_flight:
            self._flushers.add(asyncio.get_running_loop().create_task(self._flush()))

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._run(batch)
        finally:
            # leave the set in the same step that saw the queue empty: a done-callback runs a loop
            # turn later, and an operation queued in between found the set full and no flusher to
            # take it (it waited for an unrelated later operation: 670 ms with one flusher)
            self._flushers.discard(asyncio.current_task())

    async def _run(self, batch: list[_Op]) -> None:
        keys: list[str] = []
        argv: list[str | int] = ["" if self._clock is None else self._clock()]
        for op in batch:
            keys += op.keys
            argv.append(op.arg)
        try:
            reply = await self._script(keys=keys, args=argv)
        except _TRANSIENT as exc:
            self._fail(batch, StoreUnavailable(f"redis: {type(exc).__name__}: {exc}"))
            return
        except RedisError as exc:
            self._fail(batch, BackendError(f"the rate-limit script failed: {exc}"))
            return
        except BaseException as exc:  # cancelled while on the wire: the callers must not hang
            self._fail(batch, StoreUnavailable(f"redis call interrupted: {type(exc).__name__}"))
            raise
        results = reply.split(b";")
        now = int(results[-1])
        for op, result in zip(batch, results, strict=False):
            if result == b"E":
                if not op.future.done():
                    op.future.set_exception(BackendError(f"the rate-limit script rejected {op.arg!r}"))
            elif not op.future.done():
                op.future.set_result((result, now))
            elif op.orphan is not None and result.startswith(b"1,"):
                log.debug("refunding an admission whose caller went away")
                limits, lease_id, cost = op.orphan
                refund = f"s {limits} {cost.input_tokens} {cost.output_tokens} 0 {lease_id}"
                self._enqueue(op.keys, refund, urgent=False)

    @staticmethod
    def _fail(batch: list[_Op], exc: Exception) -> None:
        for op in batch:
            if not op.future.done():
                op.future.set_exception(exc)
