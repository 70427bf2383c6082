"""Protocol v1 and v2 peers work together during a rolling upgrade: a v1 engine and a v1 ingress
against this router, this client's messages as a v1 router reads them, and a router that does not
admit as this client reads it. The v1 side runs the previous stubs (tests/router/proto_v1) in a
process of its own."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from glmserve.router import convert
from glmserve.router.client import RouterClient
from glmserve.router.proto import generate
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.types import Admitted, Decision, Target, Usage
from tests.router.harness import MODEL, ServerThread, tokens
from tests.router.test_admitter import STATIC, write_tenants

Start = Callable[..., ServerThread]
V1 = Path(__file__).with_name("proto_v1")


def v1_peer(*args: str, stdin: str = "") -> dict[str, object]:
    command = [sys.executable, str(V1 / "v1_peer.py"), *args]
    done = subprocess.run(command, check=False, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_the_v1_fixtures_are_what_the_v1_proto_generates(tmp_path: Path) -> None:
    for fresh in generate.generate(tmp_path, V1 / "router.proto", V1):
        assert (V1 / fresh.name).read_bytes() == fresh.read_bytes(), f"{fresh.name} differs from v1's"


def test_a_v1_engine_and_ingress_work_with_an_admitting_router(start_router: Start, tmp_path: Path) -> None:
    admission = {"tenants_file": str(write_tenants(tmp_path / "tenants.yaml", requestsPerMinute=1))}
    router = start_router(admission=admission)
    talked = v1_peer("talk", router.target)
    # registered, heartbeated, routed (not admitted: a v1 ingress admits on its own), completed
    assert talked == {"lease_s": 30.0, "decode": "v1-engine", "unknown_fields": 1, "known": True}
    assert router.inspect(lambda s: s.router.registry.workers["v1-engine"].in_flight) == 0

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            decision = await client.route("v2", MODEL, tokens(1, 40), tenant="acme")
            assert decision.admission is not None  # the v1 request did not use the plan's one request

    asyncio.run(main())


def test_a_v1_router_reads_what_this_client_sends() -> None:
    route = convert.query_to_pb(
        "r1",
        MODEL,
        [1, 2, 3],
        tenant="acme",
        cache_salt="s",
        max_tokens=None,
        priority="premium",
        allowed_worker_ids=(),
    )
    complete = convert.completion_to_pb("r1", "finished", Usage(40, 8, 3), "failed")
    register = pb.RegisterRequest(worker=pb.Worker(worker_id="w", model=MODEL), protocol_version=2)
    encoded = {name: msg.SerializeToString().hex() for name, msg in [
        ("RouteRequest", route), ("CompleteRequest", complete), ("RegisterRequest", register)
    ]}  # fmt: skip
    read = v1_peer("decode", stdin=json.dumps(encoded))
    assert read["RouteRequest"] == {
        "requestId": "r1",
        "tenant": "acme",
        "model": MODEL,
        "promptTokenIds": [1, 2, 3],
        "cacheSalt": "s",
        "priority": "PRIORITY_PREMIUM",
    }
    assert read["CompleteRequest"] == {
        "requestId": "r1",
        "promptTokens": 40,
        "cachedTokens": 8,
        "completionTokens": 3,
        "failed": True,
    }
    assert read["RegisterRequest"] == {"worker": {"workerId": "w", "model": MODEL}}


def test_a_reply_without_admission_means_the_router_does_not_admit(start_router: Start) -> None:
    """A v1 router's reply and a v2 router without tenants both leave admission to the ingress."""
    v1_reply = pb.RouteResponse(request_id="r", decode=pb.Target(worker_id="w"), policy="precise")
    assert convert.decision_from_pb(v1_reply).admission is None
    admitted = Decision("r", None, Target("w", "", 0, 1.0), 0, 3, "precise", admission=Admitted({}, None))
    assert convert.decision_from_pb(convert.decision_to_pb(admitted)).admission == Admitted({}, None)
    router = start_router(workers={"static": STATIC})

    async def main() -> None:
        async with RouterClient(router.target, route_timeout_s=2) as client:
            decision = await client.route("r", MODEL, tokens(1, 40), tenant="acme", max_tokens=5)
            assert decision.admission is None

    asyncio.run(main())
