"""Cutting one of the two decode hosts' link (its processes live on, no reset reaches anyone) while
streams of two tenants run on both: the streams on the cut host move to the other decode replica
(or end with an error event) within 10 s, the others never pause, each tenant is billed exactly the
tokens it received, the routers stop routing to the cut engine, and once the link is back the pool
has two decode engines again. Runs after test_host_loss."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from openai import OpenAI

from tests.cluster.conftest import RunningCluster, longest_wait, stream_outcome

pytestmark = pytest.mark.slow

END_WITHIN_S = 10.0
STREAMS_END_WITHIN_S = 180.0
MAX_TOKENS = 200
ROUTER_DROPS_WITHIN_S = 15.0
CUT_FOR_S = 15.0  # longer than the GCS takes to declare the node dead (about 6 s)
RECOVER_WITHIN_S = 300.0


@dataclass
class Stream:
    key: str
    plan: str
    prompt_tokens: int = 0
    completion_tokens: int = 0  # the running usage of the last chunk received
    outcome: str = "open"
    ended_at: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # when each chunk arrived
    first: threading.Event = field(default_factory=threading.Event)  # its first chunk arrived


def _run(client: OpenAI, model: str, stream: Stream) -> None:
    def read() -> None:
        chunks = client.with_options(api_key=stream.key).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"a long answer for the {stream.plan} plan"}],
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in chunks:
            stream.arrivals.append(time.monotonic())
            if (usage := chunk.usage) is not None:
                stream.prompt_tokens, stream.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            stream.first.set()

    stream.outcome = stream_outcome(read)
    stream.ended_at = time.monotonic()
    stream.first.set()  # also when it failed before its first chunk


def test_streams_on_a_cut_decode_host_move_billed_and_the_cluster_recovers(tiny_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=tiny_cluster.base_url, api_key="unused", timeout=120, max_retries=0)
    decode = sorted(tiny_cluster.wait_for_hosts("decode", 2, RECOVER_WITHIN_S), key=lambda h: h["name"])
    assert len(decode) == 2, "the example runs two decode hosts"
    waited = time.monotonic()
    while not all(n == 2 for n in tiny_cluster.healthy_engines("decode")):  # a replaced host's engine loading
        assert time.monotonic() - waited < RECOVER_WITHIN_S, "a router lacks a healthy decode engine"
        time.sleep(2)
    before, moves_before = tiny_cluster.billed(), tiny_cluster.migrations()
    keys = {"free": tiny_cluster.api_keys["alice"], "pro": tiny_cluster.pro_key}
    streams = [Stream(keys[plan], plan) for plan in ("free", "free", "pro", "pro")]  # free: 2 at once
    # One at a time, each once the one before has its first chunk: the routers count it on its
    # engine and send the next to the other. The free plan's first: the ingress gives its batch
    # priority no slot while premium streams slow the engines, and all must be running at the cut.
    threads = [threading.Thread(target=_run, args=(client, tiny_cluster.model, s), daemon=True) for s in streams]
    for t, s in zip(threads, streams, strict=True):
        t.start()
        assert s.first.wait(timeout=120) and s.outcome == "open", f"a {s.plan} stream did not start: {s.outcome}"
    time.sleep(1)
    victim = decode[0]
    tiny_cluster.cut_link(victim["name"])
    cut = time.monotonic()
    try:
        while any(n > 1 for n in tiny_cluster.healthy_engines("decode")):
            assert time.monotonic() - cut < ROUTER_DROPS_WITHIN_S, "a router still routes to the cut host's engine"
            time.sleep(0.5)
        print(f"\nboth routers stopped routing to the cut engine {time.monotonic() - cut:.1f} s after the cut")
        for t in threads:
            t.join(timeout=max(0.1, cut + STREAMS_END_WITHIN_S - time.monotonic()))
        outcomes = sorted(s.outcome for s in streams)
        moves = {k: v - moves_before.get(k, 0) for k, v in tiny_cluster.migrations().items()}
        waits = [round(longest_wait(s.arrivals, s.ended_at, cut), 1) for s in streams]
        print(f"streams: {outcomes}; moves {moves}; longest wait for a token after the cut per stream {waits} s")
        assert all(s.outcome != "open" for s in streams), "a stream still hangs"
        assert "connection dropped" not in outcomes
        on_victim = moves.get("moved", 0) + moves.get("refused", 0)
        assert on_victim >= 1, "no stream was on the cut host"
        # A stream on the cut host waits until the GCS declares the node dead (about 6 s), then moves
        # to the other decode replica or ends with an error event; the others never pause.
        assert max(waits) <= END_WITHIN_S
        assert sum(s.outcome == "completed" for s in streams) >= len(streams) - moves.get("refused", 0)

        received = {
            (plan, direction): float(sum(getattr(s, f"{kind}_tokens") for s in streams if s.plan == plan))
            for plan in keys
            for direction, kind in (("input", "prompt"), ("output", "completion"))
        }
        assert all(received[plan, "output"] > 0 for plan in keys)
        billed = tiny_cluster.billed_since(before, received)
        print(f"tokens received by the clients {received}, billed {billed}")
        assert billed == received
        time.sleep(max(0.0, cut + CUT_FOR_S - time.monotonic()))
    finally:
        restored = time.monotonic()
        if any(h["name"] == victim["name"] for h in tiny_cluster.hosts()):
            tiny_cluster.cut_link(victim["name"], cut=False)

    # The cut host's raylet exits once it learns it was declared dead, and the pod comes back.
    while not all(n == 2 for n in tiny_cluster.healthy_engines("decode")):
        assert time.monotonic() - restored < RECOVER_WITHIN_S, "the routers did not register a second decode engine"
        time.sleep(2)
    now = tiny_cluster.wait_for_hosts("decode", 2)
    fate = "the same host" if victim["name"] in {h["name"] for h in now} else "a new host"
    print(f"both decode engines healthy again {time.monotonic() - restored:.0f} s after the link came back ({fate})")
