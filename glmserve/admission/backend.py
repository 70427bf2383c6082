"""What a limits store does: atomic admission, exactly-once settlement, lease renewal.

Two stores implement it with the same arithmetic, operation for operation (the tests replay one
sequence through both and compare every decision): `RedisBackend` (shared by all replicas) and
`MemoryBackend` (one process: the embedded default, the fail-open fallback, tests).

Per tenant and dimension a token bucket holds up to one minute's limit and refills continuously
at limit/60 s; a bucket nobody touched is full. Admission takes 1 request, the prompt tokens and
the reserved output tokens, from every limited dimension at once or from none. Settlement adds
back the unused part of a reservation (capped at full) or takes an overrun (the bucket may go
negative: the tenant waits it off). Concurrency is a set of leases that expire unless renewed,
so a crashed replica frees its slots by itself; a lease id settles at most once.
"""

from __future__ import annotations

from typing import Protocol

from glmserve.admission.model import Cost, Decision, Rates


class StoreUnavailable(Exception):
    """The shared store could not be reached; the limiter applies its outage policy."""


class LimitsBackend(Protocol):
    async def admit(self, tenant_id: str, rates: Rates, cost: Cost, lease_id: str, lease_ttl_us: int) -> Decision:
        """Take `cost` and a lease for `lease_id` atomically if every dimension allows it. Idempotent
        per lease id (a replay of an applied admission is allowed and takes nothing), so a call whose
        reply was lost may be retried."""
        ...

    async def settle(self, tenant_id: str, rates: Rates, lease_id: str, refund: Cost) -> bool:
        """End the lease and add `refund` (negative: charge); False if the lease was already gone."""
        ...

    async def renew(self, tenant_id: str, lease_id: str, lease_ttl_us: int) -> bool:
        """Push the lease's expiry to now + ttl; False if it had expired (its slot may be reused)."""
        ...

    async def aclose(self) -> None: ...
