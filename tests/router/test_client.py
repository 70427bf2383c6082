"""The async client the ingress and the engines use, against a real router (and a dead one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from glmserve.common.errors import InvalidRequestError, NotFoundError, OverloadedError
from glmserve.common.ports import free_port
from glmserve.router.agent import WorkerAgent
from glmserve.router.client import RouterClient, RouterUnavailableError
from glmserve.router.replicas import RouterReplicas, router_replicas
from glmserve.router.types import Load, Usage, WorkerInfo
from tests.router.harness import MODEL, ServerThread, SimEngine, tokens, wait_for

Start = Callable[..., ServerThread]


def worker(worker_id: str, role: str = "decode") -> WorkerInfo:
    return WorkerInfo(worker_id, role, MODEL, address=f"{worker_id}:8000", block_size=16, max_running_requests=4)


def test_route_and_complete(start_router: Start, engines: Callable[..., SimEngine]) -> None:
    router = start_router(disaggregation={"min_remote_prefill_tokens": 100})
    sim = engines("d1")
    prompt = tokens(3, 300)

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            await client.register(worker("p1", "prefill"))
            await client.register(
                WorkerInfo(
                    "d1",
                    "decode",
                    MODEL,
                    address="d1:8000",
                    kv_events_endpoint=sim.publisher.endpoint,
                    kv_replay_endpoint=sim.publisher.replay_endpoint,
                )
            )
            cold = await client.route("r1", MODEL, prompt, tenant="acme", max_tokens=64, priority="premium")
            assert cold.prefill is not None
            assert cold.prefill.worker_id == "p1"
            assert cold.prefill.address == "p1:8000"
            assert (cold.decode.worker_id, cold.prompt_tokens, cold.policy) == ("d1", 300, "precise")
            assert await client.complete("r1", stage="prefill_done")
            assert await client.complete("r1", Usage(prompt_tokens=300, cached_tokens=0, completion_tokens=64))
            assert not await client.complete("r1")
            sim.store(prompt)  # now 288 of 300 tokens are cached on d1: 12 uncached < 100
            deadline = time.monotonic() + 10
            while (warm := await client.route("r2", MODEL, prompt)).prefill is not None:
                assert time.monotonic() < deadline, "d1's events never arrived"
                await asyncio.sleep(0.02)
            assert warm.expected_cached_tokens == 288

    asyncio.run(main())


def test_errors_the_router_answers_are_not_unavailability(start_router: Start) -> None:
    router = start_router()

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            with pytest.raises(OverloadedError) as none:
                await client.route("r", MODEL, [1, 2, 3])
            assert none.value.code == "no_endpoints"
            assert none.value.retry_after_s == 1
            assert not isinstance(none.value, RouterUnavailableError)
            with pytest.raises(InvalidRequestError):
                await client.route("r", MODEL, [])
            with pytest.raises(NotFoundError):
                await client.heartbeat("ghost", Load())

    asyncio.run(main())


def test_unreachable_router_is_unavailable_fast() -> None:
    async def main() -> None:
        async with RouterClient(f"127.0.0.1:{free_port()}", route_timeout_s=0.2) as client:
            started = time.monotonic()
            with pytest.raises(RouterUnavailableError) as down:
                await client.route("r", MODEL, [1, 2, 3])
            assert time.monotonic() - started < 1.0
            assert down.value.kind.grpc_code == "UNAVAILABLE"
            assert down.value.retryable

    asyncio.run(main())


def test_agent_registers_again_after_a_router_restart(start_router: Start) -> None:
    port = free_port()
    first = start_router(port=port)

    async def main() -> None:
        agent = WorkerAgent(lambda: router_replicas([f"127.0.0.1:{port}"]), worker("w1"), lambda: Load(running=1))
        await agent.beat()
        assert first.inspect(lambda s: s.router.registry.workers["w1"].load) == Load(running=1)
        first.stop()
        await agent.beat()  # unreachable: logged, retried on the next beat
        second = start_router(port=port)
        wait_for(lambda: second.port == port)
        for _ in range(50):
            await agent.beat()
            if second.inspect(lambda s: "w1" in s.router.registry.workers):
                break
            await asyncio.sleep(0.05)
        assert second.inspect(lambda s: s.router.registry.workers["w1"].load) == Load(running=1)
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert second.inspect(lambda s: "w1" not in s.router.registry.workers)  # deregistered

    asyncio.run(main())


def test_agent_follows_the_router_replicas_the_address_resolves_to(start_router: Start) -> None:
    a, b = start_router(), start_router()
    replicas = [a.target]

    async def resolve() -> list[str]:
        return list(replicas)

    def knows(router: ServerThread) -> bool:
        return router.inspect(lambda s: "w1" in s.router.registry.workers)

    async def main() -> None:
        agent = WorkerAgent(resolve, worker("w1"), lambda: Load(running=1))
        await agent.beat()
        assert knows(a) and not knows(b)
        replicas.append(b.target)  # a router pod started
        await agent.beat()
        assert knows(b)
        replicas.remove(a.target)  # a router pod went away: not contacted any more
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert knows(a) and not knows(b)  # only the replica still resolved was told the worker left

    asyncio.run(main())


def test_router_addresses_resolve_to_one_target_per_replica() -> None:
    async def main() -> None:
        assert await router_replicas(["127.0.0.1:50051"]) == ["127.0.0.1:50051"]
        assert await router_replicas(["ipv4:127.0.0.1:1,127.0.0.1:2"]) == ["127.0.0.1:1", "127.0.0.1:2"]
        assert "127.0.0.1:7" in await router_replicas(["dns:///localhost:7"])
        assert await router_replicas(["no-such-host.invalid:50051"]) == ["no-such-host.invalid:50051"]

    asyncio.run(main())


def in_flight(router: ServerThread, worker_id: str = "w1") -> int:
    return int(router.inspect(lambda s: s.router.registry.workers[worker_id].in_flight))


def routes(router: ServerThread) -> float:
    labels = {"model": MODEL, "outcome": "local_prefill"}
    return float(router.inspect(lambda s: s.metrics.registry.get_sample_value("glmserve_router_routes_total", labels)))


def register_everywhere(*routers: ServerThread) -> None:
    async def main() -> None:
        for router in routers:
            async with RouterClient(router.target) as client:
                await client.register(worker("w1"))

    asyncio.run(main())


def test_replicas_take_routes_in_turn_and_each_completes_where_it_was_routed(start_router: Start) -> None:
    """With one round_robin channel for both, Route and Complete alternated: every Route reached
    one router and every Complete the other, so no booking was ever released."""
    a, b = start_router(), start_router()
    register_everywhere(a, b)

    async def main() -> None:
        async with RouterReplicas(f"ipv4:{a.target},{b.target}", route_timeout_s=2) as both:
            for n in range(4):
                await both.route(f"r{n}", MODEL, tokens(n, 64))
            assert (in_flight(a), in_flight(b)) == (2, 2)
            for n in range(4):
                assert await both.complete(f"r{n}", stage="prefill_done")
                assert await both.complete(f"r{n}", Usage(prompt_tokens=64))
                assert not await both.complete(f"r{n}")  # finished: forgotten, no call
            assert (in_flight(a), in_flight(b)) == (0, 0)
            for n in range(6):  # Route then Complete, as the ingress does
                await both.route(f"s{n}", MODEL, tokens(n, 64))
                assert await both.complete(f"s{n}")
            assert (in_flight(a), in_flight(b)) == (0, 0)
            assert [routes(a), routes(b)] == [5, 5]

    asyncio.run(main())


def test_replicas_route_around_a_router_that_is_down(start_router: Start) -> None:
    a = start_router()
    register_everywhere(a)

    async def main() -> None:
        async with RouterReplicas(f"ipv4:127.0.0.1:{free_port()},{a.target}", route_timeout_s=2) as both:
            for n in range(4):
                await both.route(f"r{n}", MODEL, tokens(n, 64))
                assert await both.complete(f"r{n}")
            assert in_flight(a) == 0
        async with RouterReplicas(f"127.0.0.1:{free_port()}", route_timeout_s=0.2) as none:
            with pytest.raises(RouterUnavailableError):
                await none.route("r", MODEL, [1, 2, 3])
            assert not await none.complete("r")

    asyncio.run(main())


def test_replicas_follow_the_address_and_complete_on_a_replica_no_longer_resolved(start_router: Start) -> None:
    a, b = start_router(), start_router()
    register_everywhere(a, b)
    resolved = [a.target]

    async def resolve() -> list[str]:
        return list(resolved)

    async def main() -> None:
        async with RouterReplicas("router:50051", resolve=resolve, refresh_s=0, route_timeout_s=2) as replicas:
            await replicas.route("r0", MODEL, tokens(0, 64))
            resolved[:] = [b.target]  # the router pod was replaced; the next look-up runs beside routing
            n = 0
            while not in_flight(b):
                n += 1
                assert n < 50, "the new replica was never used"
                await replicas.route(f"r{n}", MODEL, tokens(n, 64))
                await asyncio.sleep(0.01)
            assert (in_flight(a), in_flight(b)) == (n, 1)
            for k in range(n + 1):  # a's requests still complete on a
                assert await replicas.complete(f"r{k}")
            assert (in_flight(a), in_flight(b)) == (0, 0)

    asyncio.run(main())
