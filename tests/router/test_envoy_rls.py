"""Envoy's rate-limit service on the router: Envoy's generated client stub (xds-protos) against a
real RouterServer, with the limits in memory and in a real Redis shared with glmserve's own
admission."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (registers a type the docs' config names)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401  (likewise)
from envoy.service.ratelimit.v3 import rls_pb2 as rls
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc
from google.protobuf import json_format
from google.protobuf.wrappers_pb2 import UInt64Value

from glmserve.admission.limiter import Limiter
from glmserve.admission.redis_backend import RedisBackend
from glmserve.admission.tenants import TenantRegistry
from glmserve.common.errors import ConfigError
from glmserve.common.ports import free_port
from glmserve.common.tenancy import hash_api_key
from glmserve.router.config import load_config
from glmserve.router.envoy_rls import KEYS
from tests.admission.redis_server import RedisServer, serve_redis
from tests.router.harness import ServerThread

OK, OVER = rls.RateLimitResponse.OK, rls.RateLimitResponse.OVER_LIMIT
KEY = "sk-envoy-test-key"
TENANTS = f"""
plans:
  - name: small
    requestsPerMinute: 2
  - name: tokens
    inputTokensPerMinute: 100
    outputTokensPerMinute: 100
  - name: one-at-a-time
    requestsPerMinute: 3
    maxConcurrentRequests: 1
  - name: tiny-only
    requestsPerMinute: 10
    allowedModels: [glm-4.6-tiny]
tenants:
  - {{id: acme, plan: small, apiKeys: [{{sha256: "{hash_api_key(KEY)}"}}]}}
  - {{id: wordy, plan: tokens, apiKeys: [{{sha256: "{hash_api_key("sk-wordy")}"}}]}}
  - {{id: solo, plan: one-at-a-time, apiKeys: [{{sha256: "{hash_api_key("sk-solo")}"}}]}}
  - {{id: picky, plan: tiny-only, apiKeys: [{{sha256: "{hash_api_key("sk-picky")}"}}]}}
"""


def descriptor(hits: int | None = None, **entries: str) -> ratelimit_pb2.RateLimitDescriptor:
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()]
    )
    if hits is not None:
        d.hits_addend.CopyFrom(UInt64Value(value=hits))
    return d


def ask(
    stub: rls_grpc.RateLimitServiceStub, *descriptors: ratelimit_pb2.RateLimitDescriptor, domain: str = "glmserve"
) -> rls.RateLimitResponse:
    return stub.ShouldRateLimit(rls.RateLimitRequest(domain=domain, descriptors=descriptors), timeout=5)


def headers(response: rls.RateLimitResponse) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


def body(response: rls.RateLimitResponse) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(response.raw_body)["error"]
    return error


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path_factory)


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS)
    return path


@pytest.fixture
def envoy(
    request: pytest.FixtureRequest, tenants_file: Path, start_router: Callable[..., ServerThread]
) -> Iterator[tuple[rls_grpc.RateLimitServiceStub, str | None]]:
    """The router's rate-limit service stub, and its Redis URL (None: limits in memory)."""
    url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        with redis.Redis.from_url(server.url) as client:
            client.flushall()
        url = server.url
    router = start_router(
        admission={"tenants_file": str(tenants_file), "redis_url": url},
        envoy_rate_limit={"enabled": True},
    )
    with grpc.insecure_channel(router.target) as channel:
        yield rls_grpc.RateLimitServiceStub(channel), url


both_stores = pytest.mark.parametrize("envoy", ["memory", pytest.param("redis", marks=pytest.mark.slow)], indirect=True)
redis_store = pytest.mark.parametrize("envoy", [pytest.param("redis", marks=pytest.mark.slow)], indirect=True)


@both_stores
def test_requests_are_ok_under_the_plan_and_over_limit_past_it(envoy: Any) -> None:
    stub, _ = envoy
    for remaining in (1, 0):
        answer = ask(stub, descriptor(tenant="acme"))
        assert answer.overall_code == OK
        (status,) = answer.statuses
        assert status.code == OK
        assert status.current_limit.name == "requests_per_minute"
        assert status.current_limit.requests_per_unit == 2
        assert status.current_limit.unit == rls.RateLimitResponse.RateLimit.MINUTE
        assert status.limit_remaining == remaining
        assert headers(answer)["x-ratelimit-limit-requests"] == "2"
        assert headers(answer)["x-ratelimit-remaining-requests"] == str(remaining)
        assert "retry-after" not in headers(answer)

    refused = ask(stub, descriptor(tenant="acme"))
    assert refused.overall_code == OVER
    assert refused.statuses[0].code == OVER
    assert refused.statuses[0].limit_remaining == 0
    # one request per 30 s refills at 2 per minute
    assert 25 < refused.statuses[0].duration_until_reset.seconds <= 30
    sent = headers(refused)
    assert sent["x-ratelimit-remaining-requests"] == "0"
    assert 25 < int(sent["retry-after"]) <= 30
    assert int(sent["retry-after-ms"]) > 25_000
    assert sent["content-type"] == "application/json"
    assert body(refused)["type"] == "rate_limit_error"
    assert body(refused)["code"] == "rate_limit_exceeded"
    assert "plan 'small'" in body(refused)["message"]


@both_stores
def test_an_api_key_names_its_tenant_bare_or_as_a_bearer_header(envoy: Any) -> None:
    stub, _ = envoy
    assert ask(stub, descriptor(api_key=KEY)).statuses[0].limit_remaining == 1
    assert ask(stub, descriptor(api_key=f"Bearer {KEY}")).statuses[0].limit_remaining == 0
    # the same buckets as the tenant's id
    assert ask(stub, descriptor(tenant="acme")).overall_code == OVER


@both_stores
def test_callers_without_a_plan_are_refused_without_counting(envoy: Any) -> None:
    stub, _ = envoy
    for who, code in (
        (descriptor(tenant="nobody"), "unknown_tenant"),
        (descriptor(api_key="sk-wrong"), "invalid_api_key"),
    ):
        answer = ask(stub, who)
        assert answer.overall_code == OVER
        assert answer.statuses[0].code == OVER
        assert not answer.statuses[0].HasField("current_limit")
        assert body(answer)["code"] == code
        assert "retry-after" not in headers(answer), "waiting does not help a caller without a plan"
        assert "sk-wrong" not in answer.raw_body.decode()


@both_stores
def test_a_model_outside_the_plan_is_refused_for_good(envoy: Any) -> None:
    stub, _ = envoy
    assert ask(stub, descriptor(tenant="picky", model="glm-4.6-tiny")).overall_code == OK
    refused = ask(stub, descriptor(tenant="picky", model="glm-4.6"))
    assert refused.overall_code == OVER
    assert body(refused)["code"] == "model_not_in_plan"
    assert "retry-after" not in headers(refused)
    # without a model entry the plan's model list cannot apply; its rates still do
    assert ask(stub, descriptor(tenant="picky")).statuses[0].limit_remaining == 8


@both_stores
def test_token_entries_are_charged_to_the_plans_token_buckets(envoy: Any) -> None:
    stub, _ = envoy
    first = ask(stub, descriptor(tenant="wordy", prompt_tokens="60", max_tokens="30"))
    assert first.overall_code == OK
    assert headers(first)["x-ratelimit-remaining-input-tokens"] == "40"
    assert headers(first)["x-ratelimit-remaining-output-tokens"] == "70"
    # the tighter bucket is the one reported
    assert first.statuses[0].current_limit.name == "input_tokens_per_minute"
    assert first.statuses[0].limit_remaining == 40

    refused = ask(stub, descriptor(tenant="wordy", prompt_tokens="60"))
    assert refused.overall_code == OVER
    assert refused.statuses[0].current_limit.name == "input_tokens_per_minute"
    assert "input tokens per minute" in body(refused)["message"]
    # a request without sizes takes one request and no tokens, while the token buckets have room
    assert headers(ask(stub, descriptor(tenant="wordy")))["x-ratelimit-remaining-output-tokens"] == "70"
    assert ask(stub, descriptor(tenant="wordy", max_tokens="80")).statuses[0].current_limit.name == (
        "output_tokens_per_minute"
    )


@both_stores
def test_the_call_is_over_limit_when_any_descriptor_is(envoy: Any) -> None:
    stub, _ = envoy
    ask(stub, descriptor(tenant="acme"))
    ask(stub, descriptor(tenant="acme"))
    answer = ask(stub, descriptor(tenant="picky"), descriptor(tenant="acme"))
    assert answer.overall_code == OVER
    assert [s.code for s in answer.statuses] == [OK, OVER]
    assert headers(answer)["x-ratelimit-limit-requests"] == "2", "the refused descriptor's headers"


@pytest.mark.parametrize(
    ("request_", "names"),
    [
        (rls.RateLimitRequest(domain="other", descriptors=[descriptor(tenant="acme")]), "envoy_rate_limit.domain"),
        (rls.RateLimitRequest(domain="glmserve"), "no descriptors"),
        (rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="acme", user="x")]), "'user'"),
        (rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(model="m")]), "exactly one of `tenant`"),
        (
            rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="acme", api_key=KEY)]),
            "exactly one of `tenant`",
        ),
        (rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="")]), "empty value"),
        (
            rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="acme", prompt_tokens="-3")]),
            "'prompt_tokens' must be a whole number",
        ),
        (
            rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="acme", max_tokens="1" + "0" * 15)]),
            "'max_tokens' must be a whole number of tokens below 10^15",
        ),
        (
            rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="acme")], hits_addend=5),
            "hits_addend",
        ),
        (rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(0, tenant="acme")]), "hits_addend is 0"),
        (
            rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(tenant="acme"), descriptor(tenant="")]),
            "descriptor 1",
        ),
    ],
    ids=[
        "domain",
        "no-descriptors",
        "unknown-key",
        "nobody",
        "two-callers",
        "empty",
        "negative",
        "huge",
        "hits",
        "descriptor-hits",
        "second-bad",
    ],
)
@pytest.mark.parametrize("envoy", ["memory"], indirect=True)
def test_malformed_requests_are_invalid_argument_and_count_nothing(
    envoy: Any, request_: rls.RateLimitRequest, names: str
) -> None:
    stub, _ = envoy
    with pytest.raises(grpc.RpcError) as failed:
        stub.ShouldRateLimit(request_, timeout=5)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names in (failed.value.details() or "")
    assert ask(stub, descriptor(tenant="acme")).statuses[0].limit_remaining == 1
    # hits_addend 1 and unset are one request each
    one = rls.RateLimitRequest(domain="glmserve", descriptors=[descriptor(1, tenant="acme")], hits_addend=1)
    assert stub.ShouldRateLimit(one, timeout=5).statuses[0].limit_remaining == 0


@redis_store
def test_envoy_and_glmserves_admission_draw_on_the_same_buckets(envoy: Any, tenants_file: Path) -> None:
    stub, url = envoy
    solo = TenantRegistry.from_file(tenants_file).get("solo")
    assert solo is not None

    async def admission_path() -> None:
        limiter = Limiter(RedisBackend.from_url(url))
        try:
            # a request glmserve admitted runs: the plan's one concurrent request is taken
            running = await limiter.admit(solo, model="glm-4.6-tiny", prompt_tokens=10, max_tokens=5)
            assert running.allowed
            held = await asyncio.to_thread(ask, stub, descriptor(tenant="solo"))
            assert held.overall_code == OVER
            assert held.statuses[0].current_limit.name == "max_concurrent_requests"
            assert held.statuses[0].current_limit.requests_per_unit == 1
            assert "concurrent" in body(held)["message"]
            assert headers(held)["retry-after"] == "1"
            await limiter.settle(running, output_tokens=5)

            # 3 per minute: glmserve took 1, Envoy takes the next 2, then both are refused
            for remaining in (1, 0):
                answer = await asyncio.to_thread(ask, stub, descriptor(tenant="solo"))
                assert answer.overall_code == OK
                assert answer.statuses[0].limit_remaining == remaining
            refused = await limiter.admit(solo, model="glm-4.6-tiny", prompt_tokens=10, max_tokens=5)
            assert not refused.allowed
            assert refused.decision.limited_by == "requests"
            assert (await asyncio.to_thread(ask, stub, descriptor(tenant="solo"))).overall_code == OVER
        finally:
            await limiter.aclose()

    asyncio.run(admission_path())


def test_a_store_that_is_down_is_unavailable_when_fail_closed(
    tenants_file: Path, start_router: Callable[..., ServerThread]
) -> None:
    router = start_router(
        admission={
            "tenants_file": str(tenants_file),
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
            "outage": "fail-closed",
        },
        envoy_rate_limit={"enabled": True},
    )
    with grpc.insecure_channel(router.target) as channel, pytest.raises(grpc.RpcError) as failed:
        ask(rls_grpc.RateLimitServiceStub(channel), descriptor(tenant="acme"))
    # Envoy's failure_mode_deny decides what the gateway does then
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "limits store is unreachable" in (failed.value.details() or "")


def test_the_service_needs_the_plans(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"envoy_rate_limit.enabled needs admission.tenants_file"):
        load_config(None, envoy_rate_limit={"enabled": True})
    with pytest.raises(ConfigError, match="domain"):
        load_config(None, envoy_rate_limit={"domain": ""})


def test_the_service_is_off_unless_enabled(tenants_file: Path, start_router: Callable[..., ServerThread]) -> None:
    router = start_router(admission={"tenants_file": str(tenants_file)})
    with grpc.insecure_channel(router.target) as channel, pytest.raises(grpc.RpcError) as failed:
        ask(rls_grpc.RateLimitServiceStub(channel), descriptor(tenant="acme"))
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_documented_envoy_config_is_a_valid_bootstrap_that_sends_known_keys() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "envoy-rate-limit.md").read_text()
    snippet = doc.split("## Envoy configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    bootstrap = json_format.ParseDict(yaml.safe_load(snippet), bootstrap_pb2.Bootstrap())

    manager = hcm.HttpConnectionManager()
    assert bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(manager)
    limiter = rate_limit_pb2.RateLimit()
    assert manager.http_filters[0].typed_config.Unpack(limiter)
    assert limiter.domain == load_config(None).envoy_rate_limit.domain
    assert (
        limiter.rate_limit_service.grpc_service.envoy_grpc.cluster_name == bootstrap.static_resources.clusters[0].name
    )
    [auth] = limiter.rate_limit_service.grpc_service.initial_metadata  # the router's token
    assert auth.key == "authorization" and auth.value.startswith("Bearer ")
    sent = {
        action.request_headers.descriptor_key
        for host in manager.route_config.virtual_hosts
        for route in host.routes
        for limit in route.route.rate_limits
        for action in limit.actions
    }
    assert sent
    assert sent <= set(KEYS)
