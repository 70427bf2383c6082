"""The router's shared token (glmserve.router.auth) through the generated stubs: every RPC, the
Envoy rate-limit service and reflection refuse a call without the right token with
UNAUTHENTICATED; health checks stay open for the kubelet's probe; the client sends the token."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2 as rls
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from glmserve.common.config import ROUTER_TOKEN_ENV
from glmserve.common.errors import ConfigError
from glmserve.router.auth import token_from_environment
from glmserve.router.client import RouterClient, RouterUnavailableError
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.types import Load, WorkerInfo
from tests.router.harness import MODEL, ServerThread, tokens
from tests.router.test_admitter import write_tenants
from tests.router.test_envoy_rls import descriptor
from tests.router.test_protocol_versions import v1_peer

TOKEN = "router-token-for-tests-0123456789"
Start = Callable[..., ServerThread]

WORKER = pb.Worker(worker_id="w1", role=pb.ROLE_DECODE, model=MODEL, block_size=16, address="w1:8000")
ROUTE = pb.RouteRequest(request_id="r1", tenant="acme", model=MODEL, prompt_token_ids=tokens(1, 40))
# Each RPC in the order that makes the right token's calls succeed.
ROUTER_CALLS: list[tuple[str, Any]] = [
    ("Register", pb.RegisterRequest(worker=WORKER, load=pb.Load())),
    ("Heartbeat", pb.HeartbeatRequest(worker_id="w1", load=pb.Load())),
    ("Route", ROUTE),
    ("Complete", pb.CompleteRequest(request_id="r1")),
    ("Deregister", pb.DeregisterRequest(worker_id="w1")),
]


@pytest.fixture
def router(start_router: Start, tmp_path: Path) -> ServerThread:
    """An admitting router with Envoy's rate-limit service on, requiring TOKEN."""
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", requestsPerMinute=100))}
    return start_router(token=TOKEN, admission=admission, envoy_rate_limit={"enabled": True})


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def refused(call: Callable[[], object]) -> bool:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    assert failed.value.details() == "missing or wrong router token (authorization metadata)"
    return failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "metadata",
    [[], bearer("wrong-token-wrong-token-0123456789"), [("authorization", TOKEN)], bearer(TOKEN) + bearer("x" * 20)],
    ids=["none", "wrong", "no-bearer", "twice"],
)
def test_every_call_without_the_token_is_unauthenticated(router: ServerThread, metadata: list[tuple[str, str]]) -> None:
    stub = pb_grpc.RouterStub(router.channel)
    for method, request in ROUTER_CALLS:
        assert refused(functools.partial(getattr(stub, method), request, timeout=5, metadata=metadata)), method
    session = iter([pb.SessionMessage(id=1, complete=pb.CompleteRequest(request_id="r1"))])
    assert refused(lambda: list(stub.Session(session, timeout=5, metadata=metadata)))
    rls_stub = rls_grpc.RateLimitServiceStub(router.channel)
    assert refused(
        lambda: rls_stub.ShouldRateLimit(rls.RateLimitRequest(domain="glmserve"), timeout=5, metadata=metadata)
    )
    reflect = reflection_pb2_grpc.ServerReflectionStub(router.channel)
    asked = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    assert refused(lambda: list(reflect.ServerReflectionInfo(asked, timeout=5, metadata=metadata)))
    # Nothing reached the router.
    assert router.inspect(lambda s: dict(s.router.registry.workers)) == {}


def test_every_call_with_the_token_is_served(router: ServerThread) -> None:
    stub = pb_grpc.RouterStub(router.channel)
    replies = {
        method: getattr(stub, method)(request, timeout=5, metadata=bearer(TOKEN)) for method, request in ROUTER_CALLS
    }
    assert replies["Register"].lease_s == 30
    assert replies["Route"].decode.worker_id == "w1" and replies["Complete"].known
    assert router.inspect(lambda s: dict(s.router.registry.workers)) == {}  # deregistered
    rls_stub = rls_grpc.RateLimitServiceStub(router.channel)
    asked_rls = rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="acme")])
    answer = rls_stub.ShouldRateLimit(asked_rls, timeout=5, metadata=bearer(TOKEN))
    assert answer.overall_code == rls.RateLimitResponse.OK
    reflect = reflection_pb2_grpc.ServerReflectionStub(router.channel)
    asked = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    (listed,) = reflect.ServerReflectionInfo(asked, timeout=5, metadata=bearer(TOKEN))
    assert "glmserve.router.v1.Router" in {s.name for s in listed.list_services_response.service}


def test_health_checks_need_no_token(router: ServerThread) -> None:
    """The kubelet's gRPC probe sends no metadata."""
    reply = health_pb2_grpc.HealthStub(router.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_client_sends_its_token_and_a_wrong_one_makes_the_router_unusable(
    router: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong token is the operator's fault, not the tenant's: the caller sees the router as
    unavailable (and admits and routes on its own) rather than answering its tenant 401."""

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=5, token=TOKEN) as client:
            await client.register(WorkerInfo("w1", "decode", MODEL, address="w1:8000"))
            assert (await client.route("r1", MODEL, tokens(1, 40), tenant="acme")).decode.worker_id == "w1"
            assert await client.complete("r1")
        monkeypatch.setenv(ROUTER_TOKEN_ENV, TOKEN)
        async with RouterClient(router.target, route_timeout_s=5) as from_env:
            await from_env.heartbeat("w1", Load())
        monkeypatch.setenv(ROUTER_TOKEN_ENV, "wrong-token-wrong-token-0123456789")
        async with RouterClient(router.target, route_timeout_s=5) as wrong:
            with pytest.raises(RouterUnavailableError, match="Route failed: UNAUTHENTICATED"):
                await wrong.route("r2", MODEL, tokens(1, 40), tenant="acme")

    asyncio.run(main())


def test_a_v1_peer_that_sends_the_token_is_served(router: ServerThread) -> None:
    talked = v1_peer("talk", router.target, TOKEN)
    assert talked["decode"] == "v1-engine" and talked["known"] is True


@pytest.mark.parametrize("value", ["", "short", "   padded-short   "])
def test_a_short_token_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=f"{ROUTER_TOKEN_ENV} must hold at least 16 characters"):
        token_from_environment({ROUTER_TOKEN_ENV: value})
    assert token_from_environment({}) is None
    assert token_from_environment({ROUTER_TOKEN_ENV: f" {TOKEN}\n"}) == TOKEN
