"""Router shards: the partition, a replica that keeps to its engines, and the ingress's client
sending each tenant to its shard (and elsewhere while that shard is down), over real gRPC."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from glmserve.common.errors import ConfigError
from glmserve.common.ports import free_port
from glmserve.router.client import RouterClient
from glmserve.router.config import RouterConfig, load_config
from glmserve.router.replicas import RouterReplicas, RouterShards, connect, router_replicas
from glmserve.router.router import Router
from glmserve.router.shards import shard_of, shard_order
from glmserve.router.types import Load, RouteQuery, WorkerInfo
from tests.router.harness import MODEL, ServerThread, tokens
from tests.router.test_client import Start, in_flight

KEYS = [f"tenant-{i}" for i in range(3000)]


def test_shards_split_keys_evenly_and_a_new_shard_takes_keys_only_for_itself() -> None:
    four = Counter(shard_of(k, 4) for k in KEYS)
    assert set(four) == {0, 1, 2, 3} and min(four.values()) > 0.2 * len(KEYS)
    moved = [k for k in KEYS if shard_of(k, 4) != shard_of(k, 5)]
    assert all(shard_of(k, 5) == 4 for k in moved)  # the only keys that move go to the new shard
    assert 0.1 < len(moved) / len(KEYS) < 0.3
    assert all(shard_order(k, 4)[0] == shard_of(k, 4) and sorted(shard_order(k, 4)) == [0, 1, 2, 3] for k in KEYS)


def test_shard_index_must_be_below_the_count() -> None:
    with pytest.raises(ConfigError, match="index 2 must be below count 2"):
        load_config(None, shard={"count": 2, "index": 2})


def test_a_replica_registers_heartbeats_and_routes_only_its_shards_workers() -> None:
    ids = [f"engine-{i}" for i in range(12)]
    mine = [w for w in ids if shard_of(w, 3) == 1]
    router = Router(RouterConfig.model_validate({"shard": {"count": 3, "index": 1}}))
    registered = [router.register(WorkerInfo(w, "decode", MODEL), Load()) for w in ids]
    assert [w for w, new in zip(ids, registered, strict=True) if new] == mine
    for w in ids:
        router.heartbeat(w, Load(running=1))  # another shard's engine beats here too: not an error
    assert sorted(router.registry.workers) == mine
    chosen = {router.route(RouteQuery(f"r{n}", "t", MODEL, tokens(n, 64))).decode.worker_id for n in range(30)}
    assert chosen <= set(mine)


def tenant_of_shard(shard: int, count: int = 2) -> str:
    return next(k for k in KEYS if shard_of(k, count) == shard)


def register(router: ServerThread, worker_id: str) -> None:
    async def main() -> None:
        async with RouterClient(router.target) as client:
            await client.register(WorkerInfo(worker_id, "decode", MODEL, block_size=16, max_running_requests=4))

    asyncio.run(main())


def test_tenants_go_to_their_shard_and_over_to_the_next_while_it_is_down(start_router: Start) -> None:
    engines = {shard: next(f"e{i}" for i in range(100) if shard_of(f"e{i}", 2) == shard) for shard in (0, 1)}
    shards = [start_router(shard={"count": 2, "index": i}) for i in (0, 1)]
    for router in shards:
        for engine in engines.values():  # engines register with every replica; each keeps its own
            register(router, engine)
    tenants = {shard: tenant_of_shard(shard) for shard in (0, 1)}

    async def main() -> None:
        async with RouterShards([shards[0].target, shards[1].target], route_timeout_s=2) as client:
            for shard, tenant in tenants.items():
                decision = await client.route(f"{tenant}-r", MODEL, tokens(shard, 64), tenant=tenant)
                assert decision.decode.worker_id == engines[shard]
            assert (in_flight(shards[0], engines[0]), in_flight(shards[1], engines[1])) == (1, 1)
            for tenant in tenants.values():
                assert await client.complete(f"{tenant}-r")
            assert (in_flight(shards[0], engines[0]), in_flight(shards[1], engines[1])) == (0, 0)
        down = f"127.0.0.1:{free_port()}"  # shard 0's replicas are all gone
        async with RouterShards([down, shards[1].target], route_timeout_s=0.5) as client:
            decision = await client.route("r", MODEL, tokens(0, 64), tenant=tenants[0])
            assert decision.decode.worker_id == engines[1]  # served, by shard 1's engine (cold cache)
            assert await client.complete("r")

    asyncio.run(main())


def test_the_ingress_address_names_one_router_or_its_shards() -> None:
    async def main() -> None:
        async with connect("router:50051") as one, connect("router-0:50051; router-1:50051") as two:
            assert isinstance(one, RouterReplicas) and one.target == "router:50051"
            assert isinstance(two, RouterShards)
            assert [s.target for s in two.shards] == ["router-0:50051", "router-1:50051"]
        # an engine registers with every replica of every shard
        assert await router_replicas(["ipv4:127.0.0.1:1,127.0.0.1:2;127.0.0.1:3"]) == [
            "127.0.0.1:1",
            "127.0.0.1:2",
            "127.0.0.1:3",
        ]

    asyncio.run(main())
