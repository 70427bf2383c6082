"""The gRPC surface: health checking, reflection, status codes, and that bad requests never stop
the router from serving good ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from glmserve.common.errors import ConfigError
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.server import SERVICE_NAME, RouterServer
from tests.router.harness import MODEL, ServerThread, SimEngine, config, register, route, tokens

Start = Callable[..., ServerThread]


def test_health_reports_serving(start_router: Start) -> None:
    router = start_router()
    health = health_pb2_grpc.HealthStub(router.channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_router_service(start_router: Start) -> None:
    router = start_router()
    stub = reflection_pb2_grpc.ServerReflectionStub(router.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code(), dict(failed.value.trailing_metadata() or ())


def test_malformed_requests_get_invalid_argument_and_the_router_keeps_serving(
    start_router: Start, engines: Callable[..., SimEngine]
) -> None:
    router = start_router()
    stub = router.stub
    register(stub, engines("a"), replay=False)
    good = pb.RouteRequest(request_id="ok", model=MODEL, prompt_token_ids=tokens(1, 40))
    bad_routes = [
        pb.RouteRequest(model=MODEL, prompt_token_ids=[1, 2]),  # no request id
        pb.RouteRequest(request_id="x", prompt_token_ids=[1, 2]),  # no model
        pb.RouteRequest(request_id="x", model=MODEL),  # no tokens
        pb.RouteRequest(request_id="x" * 300, model=MODEL, prompt_token_ids=[1]),
        pb.RouteRequest(request_id="x", model=MODEL, prompt_token_ids=[1], priority=99),
    ]
    bad_workers = [
        pb.Worker(worker_id="w", model=MODEL, block_size=16),  # no role
        pb.Worker(worker_id="w", role=pb.ROLE_DECODE, model=MODEL),  # no block size
        pb.Worker(role=pb.ROLE_DECODE, model=MODEL, block_size=16),  # no id
        pb.Worker(worker_id="w", role=pb.ROLE_DECODE, model=MODEL, block_size=16, kv_replay_endpoint="tcp://x:1"),
        pb.Worker(worker_id="w", role=pb.ROLE_DECODE, model=MODEL, block_size=16, kv_events_endpoint="tcp://*:5557"),
        pb.Worker(worker_id="w", role=pb.ROLE_DECODE, model=MODEL, block_size=16, kv_events_endpoint="10.0.0.1:5557"),
    ]
    calls: list[Callable[[], object]] = [lambda r=r: stub.Route(r, timeout=5) for r in bad_routes]
    calls += [lambda w=w: stub.Register(pb.RegisterRequest(worker=w), timeout=5) for w in bad_workers]
    calls.append(
        lambda: stub.Heartbeat(pb.HeartbeatRequest(worker_id="a", load=pb.Load(kv_cache_usage=2.0)), timeout=5)
    )
    calls.append(lambda: stub.Complete(pb.CompleteRequest(), timeout=5))
    calls.append(lambda: stub.Complete(pb.CompleteRequest(request_id="x", stage=7), timeout=5))
    for call in calls:
        code, trailers = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "glmserve-error-code" in trailers
        assert stub.Route(good, timeout=5).decode.worker_id == "a"
    # Bytes that are not a RouteRequest at all.
    raw = router.channel.unary_unary(f"/{SERVICE_NAME}/Route")
    with pytest.raises(grpc.RpcError) as undecodable:
        raw(b"\xff\xff\xff", timeout=5)
    assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Route(good, timeout=5).decode.worker_id == "a"


def test_no_worker_is_unavailable_with_a_reason(start_router: Start, engines: Callable[..., SimEngine]) -> None:
    router = start_router(flow={"max_queued": 0})  # a request finding no free slot is refused, not queued
    code, trailers = _code(lambda: route(router.stub, [1, 2, 3]))
    assert (code, trailers["glmserve-error-code"], trailers["glmserve-retry-after-s"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "no_endpoints",
        "1",
    )
    register(router.stub, engines("a"), max_running=1, replay=False)
    route(router.stub, [1, 2, 3], "first")  # fills its only slot
    code, trailers = _code(lambda: route(router.stub, [1, 2, 3], "second"))
    assert (code, trailers["glmserve-error-code"], trailers["glmserve-retry-after-s"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "flow_queue_full",
        "1",
    )


def test_heartbeat_of_an_unknown_worker_is_not_found(start_router: Start) -> None:
    router = start_router()
    code, trailers = _code(lambda: router.stub.Heartbeat(pb.HeartbeatRequest(worker_id="ghost"), timeout=5))
    assert (code, trailers["glmserve-error-code"]) == (grpc.StatusCode.NOT_FOUND, "unknown_worker")


def test_complete_says_whether_the_request_was_known(start_router: Start, engines: Callable[..., SimEngine]) -> None:
    router = start_router()
    register(router.stub, engines("a"), replay=False)
    route(router.stub, [1, 2, 3], "known")
    assert router.stub.Complete(pb.CompleteRequest(request_id="known"), timeout=5).known
    assert not router.stub.Complete(pb.CompleteRequest(request_id="known"), timeout=5).known


def test_a_taken_port_is_a_config_error(start_router: Start) -> None:
    router = start_router()

    async def second() -> None:
        server = RouterServer(config(port=router.port))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{router.port}"):
            await server.start()

    asyncio.run(second())
