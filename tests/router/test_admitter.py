"""The router admits v2 Routes against the tenant's plan and settles each admission exactly once:
real routers over gRPC, limits in memory or in a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from glmserve.common.errors import AuthenticationError, OverloadedError, RateLimitedError
from glmserve.common.tenancy import hash_api_key
from glmserve.router.client import RouterClient
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.replicas import RouterReplicas
from glmserve.router.types import Usage
from tests.router.harness import MODEL, ServerThread, tokens

Start = Callable[..., ServerThread]
STATIC = [{"worker_id": "w1", "model": MODEL, "address": "w1:8000", "max_running_requests": 64}]


def write_tenants(path: Path, **limits: Any) -> Path:
    """One tenant, acme, on plan `gold` with these limits (the CRD's camelCase names)."""
    plans = [{"name": "gold", "priority": "premium", **limits}]
    tenants = [{"id": "acme", "plan": "gold", "apiKeys": [{"sha256": hash_api_key("sk-acme")}]}]
    path.write_text(yaml.safe_dump({"plans": plans, "tenants": tenants}))
    return path


def admitting(start_router: Start, tmp_path: Path, redis_url: str | None = None, **limits: Any) -> ServerThread:
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", **limits)), "redis_url": redis_url}
    return start_router(admission=admission, workers={"static": STATIC})


async def route(client: RouterClient | RouterReplicas, request_id: str, **options: Any) -> Any:
    return await client.route(request_id, MODEL, tokens(1, 40), tenant="acme", **options)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_route_admits_and_a_refusal_is_a_429_with_its_headers(
    start_router: Start, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    router = admitting(start_router, tmp_path, url, requestsPerMinute=2, maxOutputTokens=100)

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            first = await route(client, "r1")
            assert first.admission is not None
            assert first.admission.headers["x-ratelimit-limit-requests"] == "2"
            assert first.admission.headers["x-ratelimit-remaining-requests"] == "1"
            assert first.admission.engine_max_tokens == 100  # the plan's cap, as the client set none
            second = await route(client, "r2", max_tokens=7)
            assert second.admission is not None and second.admission.engine_max_tokens == 7
            with pytest.raises(RateLimitedError) as refused:
                await route(client, "r3")
            headers = refused.value.headers
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1
            assert refused.value.code == "rate_limit_exceeded" and "requests per minute" in refused.value.message

    asyncio.run(main())


def test_complete_settles_once_and_frees_the_tenants_concurrency(start_router: Start, tmp_path: Path) -> None:
    router = admitting(start_router, tmp_path, maxConcurrentRequests=1)

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            await route(client, "r1")
            with pytest.raises(RateLimitedError) as refused:
                await route(client, "r2")
            assert "concurrent" in refused.value.message
            assert await client.complete("r1", stage="prefill_done")  # not the end: still running
            with pytest.raises(RateLimitedError):
                await route(client, "r2")
            for outcome in ("cancelled", "failed", "ok"):
                assert await client.complete(f"r{outcome}") is False  # never routed
                request_id = f"x-{outcome}"
                if outcome == "cancelled":
                    assert await client.complete("r1", Usage(prompt_tokens=40, completion_tokens=3), outcome=outcome)
                    assert not await client.complete("r1", outcome=outcome)  # settled already
                await route(client, request_id)
                assert await client.complete(request_id, Usage(prompt_tokens=40), outcome=outcome)

    asyncio.run(main())


def test_the_router_applies_the_plan_not_the_ingress(start_router: Start, tmp_path: Path) -> None:
    router = admitting(start_router, tmp_path, maxContextTokens=50)

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            with pytest.raises(AuthenticationError) as unknown:
                await client.route("r1", MODEL, tokens(1, 40), tenant="mallory")
            assert unknown.value.code == "unknown_tenant"
            with pytest.raises(Exception, match="context tokens") as too_long:
                await client.route("r2", MODEL, tokens(1, 40), tenant="acme", max_tokens=20)
            assert too_long.value.code == "context_length_exceeded"  # type: ignore[attr-defined]
            assert (await route(client, "r3")).admission is not None

    asyncio.run(main())


def test_a_route_that_fails_after_admitting_gives_the_admission_back(start_router: Start, tmp_path: Path) -> None:
    """No worker serves the model: the admitted request is refused 503, and its slot is free."""
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", maxConcurrentRequests=1))}
    router = start_router(admission=admission)

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            for n in range(3):
                with pytest.raises(OverloadedError) as unserved:
                    await route(client, f"r{n}")
                assert unserved.value.code == "no_endpoints"

    asyncio.run(main())


def test_a_route_cancelled_while_the_store_decides_is_refunded(
    start_router: Start, tmp_path: Path, redis_url: str, redis_server: Any
) -> None:
    """The ingress gives up (deadline) while Redis is slow; the decision still arrives and is undone."""
    router = admitting(start_router, tmp_path, redis_url, maxConcurrentRequests=1)

    async def main() -> None:
        async with (
            RouterClient(router.target, route_timeout_s=0.1) as hasty,
            RouterClient(router.target, route_timeout_s=2) as patient,
        ):
            await route(patient, "warm")  # connects the router to Redis
            assert await patient.complete("warm")
            os.kill(redis_server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(Exception, match="DEADLINE_EXCEEDED"):
                    await route(hasty, "gone")
                await asyncio.sleep(0.2)
            finally:
                os.kill(redis_server.process.pid, signal.SIGCONT)
            await asyncio.sleep(0.2)
            assert (await route(patient, "next")).admission is not None  # the slot came back

    asyncio.run(main())


def test_v1_routes_are_not_admitted_twice(start_router: Start, tmp_path: Path) -> None:
    """A v1 ingress admitted the request itself: the router routes it without counting it."""
    router = admitting(start_router, tmp_path, requestsPerMinute=1)
    for n in range(3):
        request = pb.RouteRequest(request_id=f"v1-{n}", tenant="acme", model=MODEL, prompt_token_ids=tokens(n, 40))
        reply = router.stub.Route(request, timeout=5)
        assert not reply.HasField("admission")
        router.stub.Complete(pb.CompleteRequest(request_id=f"v1-{n}"), timeout=5)

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            assert (await route(client, "v2")).admission is not None  # the plan's one request is still there

    asyncio.run(main())


def test_each_replica_settles_what_it_admitted(start_router: Start, tmp_path: Path, redis_url: str) -> None:
    """Two router replicas on one Redis: every Complete reaches the replica holding the admission."""
    a, b = (admitting(start_router, tmp_path, redis_url, maxConcurrentRequests=2) for _ in range(2))

    async def main() -> None:
        async with RouterReplicas(f"ipv4:{a.target},{b.target}", route_timeout_s=2) as both:
            for round_ in range(3):
                for n in range(2):
                    assert (await route(both, f"r{round_}-{n}")).admission is not None
                with pytest.raises(RateLimitedError):
                    await route(both, f"over-{round_}")
                for n in range(2):
                    assert await both.complete(f"r{round_}-{n}", Usage(prompt_tokens=40, completion_tokens=1))

    asyncio.run(main())


def test_the_plans_priority_replaces_the_one_the_ingress_sends(start_router: Start, tmp_path: Path) -> None:
    """acme's plan is premium: its requests may fill the worker that batch must leave room on."""
    small = {"workers": {"static": [{**STATIC[0], "max_running_requests": 10}]}, "flow": {"max_queued": 0}}
    tenants = str(write_tenants(tmp_path / "tenants.yaml"))
    routers = {
        "plan": start_router(admission={"tenants_file": tenants}, **small),
        "sent": start_router(**small),  # no tenants: the priority sent applies
    }

    async def routed_until_overloaded(router: ServerThread) -> int:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            for n in range(20):
                try:
                    await route(client, f"r{n}", priority="batch")
                except OverloadedError:
                    return n
        raise AssertionError("never overloaded")

    assert {name: asyncio.run(routed_until_overloaded(r)) for name, r in routers.items()} == {"plan": 10, "sent": 8}


def test_a_request_cancelled_while_queued_leaves_the_queue_and_its_admission(
    start_router: Start, tmp_path: Path
) -> None:
    """One engine slot and a plan of two concurrent requests: the second waits for the slot, its
    ingress gives up, and the third gets both the admission and the slot it leaves."""
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", maxConcurrentRequests=2))}
    router = start_router(admission=admission, workers={"static": [{**STATIC[0], "max_running_requests": 1}]})

    def queued() -> int:
        return int(router.inspect(lambda s: s.router.flow.queued(MODEL)))

    async def main() -> None:
        async with (
            RouterClient(router.target, route_timeout_s=0.3) as hasty,
            RouterClient(router.target, route_timeout_s=10) as patient,
        ):
            await route(patient, "r1")
            with pytest.raises(Exception, match="DEADLINE_EXCEEDED"):
                await route(hasty, "r2")
            await asyncio.sleep(0.05)
            assert queued() == 0
            third = asyncio.create_task(route(patient, "r3"))
            while not queued():
                assert not third.done(), third
                await asyncio.sleep(0.01)
            assert await patient.complete("r1")
            assert (await third).admission is not None

    asyncio.run(main())


def test_an_admission_never_completed_is_settled_after_request_ttl_s(start_router: Start, tmp_path: Path) -> None:
    """The ingress died with the request: the sweep settles it (as admitted) and frees its slot."""
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", maxConcurrentRequests=1))}
    router = start_router(admission=admission, workers={"static": STATIC}, request_ttl_s=0.5)

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            await route(client, "orphan")
            with pytest.raises(RateLimitedError):
                await route(client, "r0")
            for n in range(1, 50):
                await asyncio.sleep(0.1)
                try:
                    await route(client, f"r{n}")
                except RateLimitedError:
                    continue
                assert not await client.complete("orphan")  # forgotten: settled once, by the sweep
                return
            raise AssertionError("the orphan's admission was never settled")

    asyncio.run(main())
