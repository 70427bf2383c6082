"""Refuses a client that keeps sending wrong API keys, before its next key is even looked up.

Counted per client address in this ingress replica (a guesser spread over several replicas gets
each replica's allowance): the aim is to make guessing slow and noisy, not to meter tenants.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from glmserve.common.errors import RateLimitedError

# Addresses remembered at once; the oldest are forgotten first, so a flood of addresses costs
# bounded memory (and at worst lets an address start over).
MAX_CLIENTS = 10_000


class FailedKeyThrottle:
    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_failures
        self._window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, client: str) -> None:
        """Raises RateLimitedError (429 with Retry-After) while `client` is over its allowance."""
        failures = self._recent(client)
        if failures is not None and len(failures) >= self._max:
            retry_after_s = failures[0] + self._window_s - self._clock()
            raise RateLimitedError(
                f"too many requests with an invalid API key from this address; retry in {retry_after_s:.0f} s",
                code="too_many_failed_keys",
                retry_after_s=retry_after_s,
            )

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        if failures is None:
            failures = self._failures[client] = deque(maxlen=self._max)
            if len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)
        failures.append(self._clock())

    def _recent(self, client: str) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        cutoff = self._clock() - self._window_s
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        self._failures.move_to_end(client)
        return failures
