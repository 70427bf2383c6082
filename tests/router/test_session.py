"""Route and Complete on one Session stream (protocol v3): answered by id, errors as statuses, the
token required, a cancelled Route settled exactly once, and a v3 client with a router that has no
Session (v2)."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from glmserve.common.errors import RateLimitedError
from glmserve.router import server as router_server
from glmserve.router.client import RouterClient, RouterUnavailableError
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.status import ERROR_CODE
from tests.router.harness import MODEL, ServerThread, tokens
from tests.router.test_admitter import STATIC, route, write_tenants

Start = Callable[..., ServerThread]
TOKEN = "a-router-token-0123456789"


class RawSession:
    """The generated stub's Session, one message at a time."""

    def __init__(self, router: ServerThread, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._outbox: queue.SimpleQueue[pb.SessionMessage | None] = queue.SimpleQueue()
        self._replies: Iterator[pb.SessionReply] = router.stub.Session(
            iter(self._outbox.get, None), metadata=metadata, timeout=10
        )

    def call(self, message: pb.SessionMessage) -> pb.SessionReply:
        self._outbox.put(message)
        return next(self._replies)

    def close(self) -> None:
        self._outbox.put(None)


def test_each_call_is_answered_by_id_and_a_bad_one_ends_only_itself(start_router: Start) -> None:
    router = start_router(workers={"static": STATIC})
    session = RawSession(router)
    good = pb.RouteRequest(request_id="r1", model=MODEL, prompt_token_ids=tokens(1, 40), protocol_version=3)
    routed = session.call(pb.SessionMessage(id=7, route=good))
    assert (routed.id, routed.route.request_id, routed.route.decode.worker_id) == (7, "r1", "w1")
    no_tokens = session.call(pb.SessionMessage(id=8, route=pb.RouteRequest(request_id="r2", model=MODEL)))
    empty = session.call(pb.SessionMessage(id=9))
    for reply, call_id in ((no_tokens, 8), (empty, 9)):
        assert (reply.id, reply.WhichOneof("result")) == (call_id, "status")
        assert reply.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert {t.key: t.value for t in reply.status.trailers}[ERROR_CODE] == "invalid_argument"
    done = session.call(pb.SessionMessage(id=10, complete=pb.CompleteRequest(request_id="r1")))
    assert (done.id, done.complete.known) == (10, True)
    assert router.inspect(lambda s: s.router.registry.workers["w1"].in_flight) == 0
    session.close()


def test_the_session_needs_the_routers_token(start_router: Start) -> None:
    """A stream without it is refused as a unary call is (test_auth.py); the client's has it."""
    router = start_router(token=TOKEN, workers={"static": STATIC})

    async def main() -> None:
        async with RouterClient(router.target, token=TOKEN) as client:
            assert (await route(client, "r1")).decode.worker_id == "w1"
            assert await client.complete("r1")
        async with RouterClient(router.target, token="not-the-token-0123456789") as stranger:
            with pytest.raises(RouterUnavailableError, match="UNAUTHENTICATED"):
                await route(stranger, "r2")

    asyncio.run(main())


@pytest.mark.parametrize("moment", ["while queued", "as its slot frees"])
def test_a_cancelled_route_releases_its_slot_and_admission_exactly_once(
    start_router: Start, tmp_path: Path, moment: str
) -> None:
    """One engine slot, two concurrent requests per plan. r2 waits for r1's slot and its caller
    gives up, either in the queue or just as r1 completes (the router then has routed it by the
    time the Cancel arrives, and the client completes it as cancelled). Either way the slot and the
    admission come back once: r3 routes at once, r4 is admitted (and waits for the slot), r5 is over the plan's two."""
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", maxConcurrentRequests=2))}
    router = start_router(admission=admission, workers={"static": [{**STATIC[0], "max_running_requests": 1}]})

    async def until_queued(count: int) -> None:
        """Waits until `count` requests wait for the slot (in far less than the queue's 30 s TTL)."""
        for _ in range(500):
            if router.inspect(lambda s: s.router.flow.queued(MODEL)) == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"never {count} queued")

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=10) as client:
            await route(client, "r1")
            r2 = asyncio.create_task(route(client, "r2"))
            await until_queued(1)
            if moment == "while queued":
                r2.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await r2
                await until_queued(0)
                assert await client.complete("r1")
            else:  # r1's Complete goes out first; the Cancel follows it on the stream
                completing = asyncio.create_task(client.complete("r1"))
                await asyncio.sleep(0)
                r2.cancel()
                assert await completing
                with pytest.raises(asyncio.CancelledError):
                    await r2
            assert (await asyncio.wait_for(route(client, "r3"), 5)).admission is not None
            r4 = asyncio.create_task(route(client, "r4"))
            await until_queued(1)
            with pytest.raises(RateLimitedError):
                await route(client, "r5")
            assert await client.complete("r3")
            await asyncio.wait_for(r4, 5)
            assert await client.complete("r4")

    asyncio.run(main())


def _v2_methods(servicer: object, server: grpc.aio.Server) -> None:
    """What the v2 stubs registered: the Router service without Session."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=getattr(pb, f"{name}Request").FromString,
            response_serializer=getattr(pb, f"{name}Response").SerializeToString,
        )
        for name in ("Register", "Heartbeat", "Deregister", "Route", "Complete")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(router_server.SERVICE_NAME, handlers),))


def test_a_router_without_session_gets_unary_calls(
    start_router: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_server.pb_grpc, "add_RouterServicer_to_server", _v2_methods)
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", maxConcurrentRequests=1))}
    router = start_router(admission=admission, workers={"static": STATIC})
    with pytest.raises(grpc.RpcError) as missing:
        RawSession(router).call(pb.SessionMessage(id=1, complete=pb.CompleteRequest(request_id="r")))
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            for n in range(3):
                assert (await route(client, f"r{n}")).admission is not None
                with pytest.raises(RateLimitedError):  # the admission is the router's, held until Complete
                    await route(client, f"over{n}")
                assert await client.complete(f"r{n}")

    asyncio.run(main())
