"""The Redis script and the in-memory store make identical decisions, operation for operation."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from glmserve.admission.memory import MemoryBackend
from glmserve.admission.model import Cost, Rates
from glmserve.admission.redis_backend import RedisBackend
from tests.admission.conftest import ManualClock

pytestmark = pytest.mark.asyncio

PLANS = [Rates(7, 500, 300, 3), Rates(60, 0, 1000, 0), Rates(0, 120, 0, 1), Rates(2, 0, 0, 0), Rates(1, 1, 1, 1)]
TTL_US = 5_000_000


@pytest.mark.parametrize("seed", range(4))
async def test_random_operations_agree(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    memory, shared = MemoryBackend(clock), RedisBackend.from_url(redis_url, clock=clock)
    open_leases: list[tuple[str, Rates, str, Cost]] = []
    kinds: Counter[str] = Counter()
    try:
        for step in range(600):
            tenant = f"t{rng.randrange(4)}"
            rates = PLANS[int(tenant[1])] if rng.random() < 0.9 else rng.choice(PLANS)  # plans change too
            op = rng.choices(["admit", "settle", "renew", "tick"], [6, 3, 1, 3])[0]
            if op == "admit":
                cost, lease = Cost(rng.randrange(0, 200), rng.randrange(0, 150)), f"l{step}"
                if open_leases and rng.random() < 0.1:  # a retry whose first attempt was applied
                    tenant, rates, lease, cost = rng.choice(open_leases)
                    kinds["replayed"] += 1
                a = await memory.admit(tenant, rates, cost, lease, TTL_US)
                b = await shared.admit(tenant, rates, cost, lease, TTL_US)
                assert a == b, f"step {step}"
                if a.allowed and all(lease != held[2] for held in open_leases):
                    open_leases.append((tenant, rates, lease, cost))
                kinds["allowed" if a.allowed else f"refused:{a.limited_by}"] += 1
            elif op == "settle" and open_leases:
                tenant, rates, lease, cost = open_leases.pop(rng.randrange(len(open_leases)))
                refund = Cost(rng.randrange(-50, 50), cost.output_tokens - rng.randrange(0, 400))
                settled = await memory.settle(tenant, rates, lease, refund)
                assert settled == await shared.settle(tenant, rates, lease, refund), f"step {step}"
                kinds[f"settled:{settled}"] += 1
            elif op == "renew" and open_leases:
                tenant, _, lease, _ = rng.choice(open_leases)
                renewed = await memory.renew(tenant, lease, TTL_US)
                assert renewed == await shared.renew(tenant, lease, TTL_US), f"step {step}"
                kinds[f"renewed:{renewed}"] += 1
            else:
                clock.advance(rng.choice([0.0, 0.001, 0.37, 1.0, 4.9, 13.0]))
    finally:
        await shared.aclose()
    # the walk must have exercised every outcome, or agreeing would prove little
    assert {"allowed", "replayed", "settled:True", "settled:False", "renewed:True", "renewed:False"} <= kinds.keys()
    assert {k for k in kinds if k.startswith("refused")} >= {
        "refused:requests",
        "refused:input_tokens",
        "refused:output_tokens",
        "refused:concurrency",
    }
