"""Routing on engines' KV events, end to end: simulated engines publish vLLM-format events over
real ZMQ sockets, the router subscribes, and decisions are read over real gRPC."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from tests.router.harness import MODEL, ServerThread, SimEngine, cached_on, probe, register, route, tokens, wait_for

Start = Callable[..., ServerThread]
Engines = Callable[..., SimEngine]
PROMPT = tokens(7, 170)  # 10 full blocks of 16 = 160 tokens
QUESTION = PROMPT + tokens(8, 30)  # the cached prefix plus a new turn


@dataclass
class Cluster:
    router: ServerThread
    sims: dict[str, SimEngine]
    beating: dict[str, SimEngine]  # the engines whose agents still heartbeat


@pytest.fixture
def cluster(start_router: Start, engines: Engines) -> Iterator[Cluster]:
    """A router (lease 0.6 s) with three decode engines x, y, z heartbeating every 0.1 s until the
    test ends or removes one from `beating`."""
    router = start_router(workers={"heartbeat_interval_s": 0.1, "lease_s": 0.6, "forget_after_s": 30})
    sims = {name: engines(name) for name in ("x", "y", "z")}
    for sim in sims.values():
        register(router.stub, sim)
    beating = dict(sims)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.1):
            for sim in list(beating.values()):
                router.stub.Heartbeat(pb.HeartbeatRequest(worker_id=sim.worker_id), timeout=5)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield Cluster(router, sims, beating)
    stop.set()
    thread.join()


def test_request_goes_where_its_prefix_is_cached(cluster: Cluster) -> None:
    router, sims = cluster.router, cluster.sims
    sims["y"].store(PROMPT)
    wait_for(cached_on(router.stub, QUESTION, "y", 160), what="y's events to reach the index")
    for n in range(20):  # not a lucky tie-break: every request id goes to y
        reply = probe(router.stub, QUESTION, f"q{n}")
        assert (reply.decode.worker_id, reply.expected_cached_tokens, reply.decode.address) == ("y", 160, "addr-y")
    # An uncached prompt is spread by the tie-break, not sent to y.
    cold = {probe(router.stub, tokens(99, 170), f"c{n}").decode.worker_id for n in range(20)}
    assert len(cold) > 1


def test_saturated_worker_is_avoided_until_it_drains(cluster: Cluster) -> None:
    router, sims = cluster.router, cluster.sims
    sims["x"].store(PROMPT)
    wait_for(cached_on(router.stub, QUESTION, "x", 160), what="x's prefix in the index")
    cluster.beating.pop("x")
    router.stub.Heartbeat(pb.HeartbeatRequest(worker_id="x", load=pb.Load(running=8, waiting=4)), timeout=5)
    reply = route(router.stub, QUESTION, "busy")
    assert reply.decode.worker_id in ("y", "z")
    assert reply.expected_cached_tokens == 0
    router.stub.Heartbeat(pb.HeartbeatRequest(worker_id="x", load=pb.Load(running=1)), timeout=5)
    assert route(router.stub, QUESTION, "drained").decode.worker_id == "x"


def test_requests_routed_but_not_completed_saturate_a_worker(
    cluster: Cluster,
) -> None:
    router, sims = cluster.router, cluster.sims
    sims["z"].store(PROMPT)
    wait_for(cached_on(router.stub, QUESTION, "z", 160), what="z's prefix in the index")
    # max_running_requests is 8 and standard priority stops at 95%: 8 requests fill z.
    assert {route(router.stub, QUESTION, f"hold{n}").decode.worker_id for n in range(8)} == {"z"}
    assert route(router.stub, QUESTION, "overflow").decode.worker_id in ("x", "y")
    router.stub.Complete(pb.CompleteRequest(request_id="hold0"), timeout=5)
    assert route(router.stub, QUESTION, "after").decode.worker_id == "z"


def test_dead_worker_is_avoided(cluster: Cluster) -> None:
    router, sims = cluster.router, cluster.sims
    for name in ("x", "y"):
        sims[name].store(PROMPT)
    wait_for(lambda: probe(router.stub, QUESTION, "probe").expected_cached_tokens == 160, what="prefix indexed")
    cluster.beating.pop("x")  # x stops heartbeating: its lease (0.6 s) runs out
    wait_for(
        lambda: {probe(router.stub, QUESTION, f"d{n}").decode.worker_id for n in range(10)} == {"y"},
        what="x's lease to expire",
    )
    router.stub.Deregister(pb.DeregisterRequest(worker_id="y"), timeout=5)  # y shuts down cleanly
    reply = route(router.stub, QUESTION, "last")
    assert (reply.decode.worker_id, reply.expected_cached_tokens) == ("z", 0)


def test_index_follows_store_evict_and_clear(start_router: Start, engines: Engines) -> None:
    router = start_router()
    sim = engines("solo")
    register(router.stub, sim)
    sim.store(PROMPT)
    wait_for(cached_on(router.stub, QUESTION, "solo", 160), what="stored blocks")
    sim.evict(PROMPT, from_block=4)
    wait_for(cached_on(router.stub, QUESTION, "solo", 64), what="evicted blocks")
    sim.store(PROMPT, cache_salt="tenant-b")  # salted: a different chain, no hit for unsalted prompts
    wait_for(cached_on_salted(router.stub, QUESTION, "tenant-b", 160), what="salted blocks")
    assert probe(router.stub, QUESTION, "unsalted").expected_cached_tokens == 64
    sim.clear()
    wait_for(cached_on(router.stub, QUESTION, "solo", 0), what="cleared blocks")


def cached_on_salted(stub: pb_grpc.RouterStub, prompt: list[int], salt: str, expected: int) -> Callable[[], bool]:
    return lambda: probe(stub, prompt, f"salted-{salt}", cache_salt=salt).expected_cached_tokens == expected


def test_router_restart_rebuilds_the_index_by_replay(start_router: Start, engines: Engines) -> None:
    first = start_router()
    sims = [engines(name) for name in ("a", "b")]
    for sim in sims:
        register(first.stub, sim)
    sims[1].store(PROMPT)
    sims[1].evict(PROMPT, from_block=8)
    wait_for(cached_on(first.stub, QUESTION, "b", 128), what="the first router's index")
    first.stop()
    # A new router process knows nothing; the engines register again (their agents get NOT_FOUND)
    # and publish nothing new: the index comes back from the engines' replay buffers alone.
    second = start_router()
    for sim in sims:
        register(second.stub, sim)
    wait_for(cached_on(second.stub, QUESTION, "b", 128), what="the replayed index")
    counts = second.inspect(lambda s: s.router.index.blocks("b"))
    assert counts == 8


def test_missed_batches_are_replayed(start_router: Start, engines: Engines) -> None:
    router = start_router()
    sim = engines("a")
    register(router.stub, sim)
    sim.store(PROMPT[:80])
    wait_for(cached_on(router.stub, QUESTION, "a", 80), what="the first batch")
    sim.store(PROMPT, drop=True)  # the publisher drops it (high-water mark) but buffers it
    sim.store(tokens(5, 64))  # the next live batch reveals the gap
    wait_for(cached_on(router.stub, QUESTION, "a", 160), what="the dropped batch, replayed")
    gaps = router.inspect(lambda s: s.metrics.kv_event_gaps.labels("replayed")._value.get())
    assert gaps >= 1


def test_engine_restart_drops_its_blocks(start_router: Start, engines: Engines) -> None:
    router = start_router()
    sim = engines("a")
    register(router.stub, sim)
    for _ in range(100):  # the restarted engine's numbers restart far below where these end
        sim.store(PROMPT)
    wait_for(cached_on(router.stub, QUESTION, "a", 160), what="blocks before the restart")
    sim.restart()  # same endpoints, sequence numbers from 0, empty cache
    other = tokens(11, 64)
    indexed = cached_on(router.stub, other, "a", 64)
    # The router's SUB socket reconnects by itself, missing what the new engine sends meanwhile;
    # a running engine keeps publishing, and its next batch reveals the restart.
    wait_for(lambda: sim.store(other) >= 0 and indexed(), what="the restarted engine's blocks")
    assert route(router.stub, QUESTION, "old").expected_cached_tokens == 0


def test_two_router_replicas_decide_alike(start_router: Start, engines: Engines) -> None:
    routers = [start_router(), start_router()]
    sims = [engines(f"e{i}") for i in range(4)]
    for router, order in zip(routers, (sims, sims[::-1]), strict=True):  # registered in opposite orders
        for sim in order:
            register(router.stub, sim)
    prompts = [tokens(seed, 200) for seed in range(6)]
    for i, prompt in enumerate(prompts[:4]):
        sims[i].store(prompt[: 16 * (4 + i)])
    for router in routers:
        wait_for(cached_on(router.stub, prompts[3], "e3", 112), what="both indexes")
    decisions = []
    for router in routers:
        seen = []
        for n, prompt in enumerate(prompts * 3):
            reply = probe(router.stub, prompt, f"r{n}")
            seen.append((reply.decode.worker_id, reply.expected_cached_tokens, list(reply.reasons)))
        decisions.append(seen)
    assert decisions[0] == decisions[1]
    assert {worker for worker, _, _ in decisions[0]} == {"e0", "e1", "e2", "e3"}
    assert route(routers[0].stub, prompts[2], "x").decode.worker_id == "e2"


def test_events_for_another_model_do_not_route_it(start_router: Start, engines: Engines) -> None:
    router = start_router()
    a, b = engines("a"), engines("b")
    register(router.stub, a)
    other = b.worker()
    other.model = "other-model"
    router.stub.Register(pb.RegisterRequest(worker=other), timeout=5)
    b.store(PROMPT)
    wait_for(lambda: probe(router.stub, QUESTION, "p", model="other-model").expected_cached_tokens == 160, what="b")
    reply = router.stub.Route(pb.RouteRequest(request_id="m", model=MODEL, prompt_token_ids=QUESTION), timeout=5)
    assert (reply.decode.worker_id, reply.expected_cached_tokens) == ("a", 0)


def test_requests_sharing_a_prefix_follow_the_first_before_its_events(start_router: Start, engines: Engines) -> None:
    """An agent's parallel sub-tasks arrive while the first is still prefilling their shared context:
    they go where it went, not wherever load is lowest (which would prefill the context again)."""
    router = start_router(events={"replay_timeout_s": 1.0, "expect_s": 30})
    for name in ("x", "y", "z"):
        register(router.stub, engines(name))
    first = route(router.stub, QUESTION, "first")
    others = [route(router.stub, PROMPT + tokens(20 + n, 30), f"sub{n}") for n in range(4)]
    assert {r.decode.worker_id for r in others} == {first.decode.worker_id}
    assert [r.expected_cached_tokens for r in others] == [160] * 4
