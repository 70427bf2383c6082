"""Cutting a decode host's link (its processes live on, no reset reaches anyone): its streams end
with an error event within 10 s, each tenant is billed exactly the tokens it received, the routers
stop routing to its engine, and once the link is back new requests succeed. Runs after
test_host_loss (it cuts that test's replacement host)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import openai
import pytest
from openai import OpenAI

from glmserve.operator.build.inputs import ROUTER_METRICS_PORT, SERVE_PORT
from tests.cluster.conftest import RunningCluster

pytestmark = pytest.mark.slow

END_WITHIN_S = 10.0
ROUTER_DROPS_WITHIN_S = 15.0
CUT_FOR_S = 15.0  # longer than the GCS takes to declare the node dead (about 6 s)
RECOVER_WITHIN_S = 300.0
TOKENS = "glmserve_ingress_tokens_total"


@dataclass
class Stream:
    key: str
    plan: str
    prompt_tokens: int = 0
    completion_tokens: int = 0  # the running usage of the last chunk received
    outcome: str = "open"
    ended_at: float = 0.0
    first: threading.Event = field(default_factory=threading.Event)  # its first chunk arrived


def _run(client: OpenAI, model: str, stream: Stream) -> None:
    try:
        chunks = client.with_options(api_key=stream.key).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"a long answer for the {stream.plan} plan"}],
            max_tokens=2000,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in chunks:
            if (usage := chunk.usage) is not None:
                stream.prompt_tokens, stream.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            stream.first.set()
        stream.outcome = "completed"
    except openai.APIConnectionError:
        stream.outcome = "connection dropped"
    except openai.APIError as exc:  # the ingress's OpenAI error event
        stream.outcome = f"error event: {exc.message}"
    stream.ended_at = time.monotonic()
    stream.first.set()  # also when it failed before its first chunk


def _billed(cluster: RunningCluster) -> dict[tuple[str, str], float]:
    """(plan, direction) -> tokens the ingress counted (tenants outside metrics_tenants share a label,
    the example's two tenants are on different plans)."""
    (ingress,) = cluster.hosts(pool="ingress")
    billed: dict[tuple[str, str], float] = {}
    for (name, labels), value in cluster.metrics(ingress, SERVE_PORT).items():
        if name == TOKENS:
            key = (dict(labels)["plan"], dict(labels)["direction"])
            billed[key] = billed.get(key, 0) + value
    return billed


def _healthy_decode_engines(cluster: RunningCluster) -> list[float]:
    return [
        value
        for router in cluster.hosts(role="router")
        for (name, labels), value in cluster.metrics(router, ROUTER_METRICS_PORT).items()
        if name == "glmserve_router_workers" and dict(labels) == {"role": "decode", "state": "healthy"}
    ]


def test_streams_on_a_cut_decode_host_end_billed_and_the_cluster_recovers(tiny_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=tiny_cluster.base_url, api_key="unused", timeout=60, max_retries=0)
    (decode,) = tiny_cluster.wait_for_hosts("decode", 1)
    assert all(n >= 1 for n in _healthy_decode_engines(tiny_cluster)), "a router has no healthy decode engine"
    before = _billed(tiny_cluster)
    keys = {"free": tiny_cluster.api_keys["alice"], "pro": tiny_cluster.pro_key}
    streams = [Stream(keys[plan], plan) for plan in ("free", "free", "pro", "pro")]  # free: 2 at once
    # The free plan's streams first: the ingress gives its batch priority no slot while premium
    # streams slow the engine, and these must all be running on the host when its link is cut.
    threads = []
    for plan in keys:
        started = [s for s in streams if s.plan == plan]
        threads += [threading.Thread(target=_run, args=(client, tiny_cluster.model, s), daemon=True) for s in started]
        for t in threads[-len(started) :]:
            t.start()
        for s in started:
            assert s.first.wait(timeout=120) and s.outcome == "open", f"a {plan} stream did not start: {s.outcome}"
    time.sleep(1)
    cut = time.monotonic()
    tiny_cluster.cut_link(decode["name"])
    try:
        for t in threads:
            t.join(timeout=max(0.1, cut + END_WITHIN_S + 5 - time.monotonic()))
        outcomes = sorted(s.outcome for s in streams)
        print(f"\nstreams ended {[round(s.ended_at - cut, 1) for s in streams]} s after the cut: {outcomes}")
        assert all(s.outcome != "open" for s in streams), "a stream still hangs on the cut host"
        assert max(s.ended_at - cut for s in streams) <= END_WITHIN_S
        assert all(s.outcome.startswith("error event") for s in streams), outcomes
        # Migration is on, but the pool's only decode replica is on the cut host: no move is tried.
        assert all("no other replica" in s.outcome for s in streams), outcomes

        while any(n > 0 for n in _healthy_decode_engines(tiny_cluster)):
            assert time.monotonic() - cut < ROUTER_DROPS_WITHIN_S, "a router still routes to the cut host's engine"
            time.sleep(0.5)
        print(f"both routers stopped routing to the cut engine {time.monotonic() - cut:.1f} s after the cut")

        received = {
            (plan, direction): float(sum(getattr(s, f"{kind}_tokens") for s in streams if s.plan == plan))
            for plan in keys
            for direction, kind in (("input", "prompt"), ("output", "completion"))
        }
        assert all(received[plan, "output"] > 0 for plan in keys)
        deadline = time.monotonic() + 5  # the ingress settles a stream just after its last bytes
        while True:
            after = _billed(tiny_cluster)
            billed = {k: after.get(k, 0) - before.get(k, 0) for k in received}
            if billed == received or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(f"tokens received by the clients {received}, billed {billed}")
        assert billed == received
        time.sleep(max(0.0, cut + CUT_FOR_S - time.monotonic()))
    finally:
        restored = time.monotonic()
        if any(h["name"] == decode["name"] for h in tiny_cluster.hosts()):
            tiny_cluster.cut_link(decode["name"], cut=False)

    recovered = tiny_cluster.first_reply(since=restored, within_s=RECOVER_WITHIN_S)
    (now,) = tiny_cluster.wait_for_hosts("decode", 1)
    fate = "the same host" if now["name"] == decode["name"] else f"a new host {now['name']}"
    print(f"a new request succeeded {recovered:.0f} s after the link came back, on {fate}")
