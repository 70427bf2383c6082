"""Losing one of the two decode hosts (SIGKILL of every process of it) while greedy streams run on
both: every stream on the surviving host completes (how far each matched an uninterrupted run is
reported); each stream on the killed host moves to the surviving replica (request migration) and
completes, or ends with an OpenAI error event, within 10 s of the kill; both routers drop its
engine; the tenant is billed exactly the tokens its client received; the pod comes back as a new
host whose engine both routers register. Runs before test_link_cut (it replaces a decode host)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai import OpenAI

from tests.cluster.conftest import RunningCluster, longest_wait, stream_outcome

pytestmark = pytest.mark.slow

# Distinct from their first word on, so that no cached block draws them all to one engine.
PROMPTS = [f"{word} story: once the {word} went" for word in ("Fox", "River", "Lamp", "City", "Stone", "Cloud")]
MAX_TOKENS = 160
STARTED_AFTER_TOKENS = 8  # the kill comes once every stream has this many
EXTRA: dict[str, Any] = {"ignore_eos": True, "return_token_ids": True, "thinking": {"type": "disabled"}}
END_WITHIN_S = 10.0
ROUTER_DROPS_WITHIN_S = 15.0  # the routers' lease (6 s) and a heartbeat, as for a cut link
RECOVER_WITHIN_S = 300.0


@dataclass
class Stream:
    prompt: str
    token_ids: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # when each chunk arrived
    received: list[int] = field(default_factory=list)  # the tokens received by then
    prompt_tokens: int = 0
    completion_tokens: int = 0  # the running usage of the last chunk received
    outcome: str = "open"
    ended_at: float = 0.0
    first: threading.Event = field(default_factory=threading.Event)  # its first chunk arrived
    started: threading.Event = field(default_factory=threading.Event)  # STARTED_AFTER_TOKENS arrived


def _run(client: OpenAI, model: str, stream: Stream) -> None:
    def read() -> None:
        chunks = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": stream.prompt}], max_tokens=MAX_TOKENS,
            temperature=0, stream=True, extra_body=EXTRA,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )  # fmt: skip
        for chunk in chunks:
            stream.arrivals.append(time.monotonic())
            stream.first.set()
            for choice in chunk.choices:
                stream.token_ids += (choice.model_extra or {}).get("token_ids") or []
            stream.received.append(len(stream.token_ids))
            if (usage := chunk.usage) is not None:
                stream.prompt_tokens, stream.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            if len(stream.token_ids) >= STARTED_AFTER_TOKENS:
                stream.started.set()

    stream.outcome = stream_outcome(read)
    stream.ended_at = time.monotonic()
    stream.first.set()
    stream.started.set()


def _streamed(cluster: RunningCluster, fault: Any = None) -> list[Stream]:
    """Every prompt streamed, each started once the one before it has its first chunk (so the
    routers count it on its engine and spread the next); `fault()` runs once every stream has
    STARTED_AFTER_TOKENS tokens."""
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.pro_key, timeout=180, max_retries=0)
    streams = [Stream(p) for p in PROMPTS]
    threads = [threading.Thread(target=_run, args=(client, cluster.model, s), daemon=True) for s in streams]
    for t, s in zip(threads, streams, strict=True):
        t.start()
        assert s.first.wait(timeout=120) and s.outcome == "open", f"a stream did not start: {s.outcome}"
    for s in streams:
        assert s.started.wait(timeout=120) and s.outcome == "open", f"a stream ended early: {s.outcome}"
    if fault is not None:
        fault()
    for t in threads:
        t.join(timeout=240)
    assert all(s.outcome != "open" for s in streams), "a stream still hangs"
    return streams


def test_streams_on_the_surviving_decode_host_complete_and_the_killed_ones_move(tiny_cluster: RunningCluster) -> None:
    cluster = tiny_cluster
    decode = sorted(cluster.wait_for_hosts("decode", 2), key=lambda h: h["name"])
    assert len(decode) == 2, "the example runs two decode hosts"
    reference = _streamed(cluster)
    assert all(s.outcome == "completed" and len(s.token_ids) == MAX_TOKENS for s in reference)
    before, billed_before = cluster.migrations(), cluster.billed()
    victim = decode[0]
    killed, dropped = 0.0, 0.0

    def kill() -> None:
        nonlocal killed, dropped
        cluster.kill_host(victim["name"])  # its last step is the SIGKILLs
        killed = time.monotonic()
        while any(n > 1 for n in cluster.healthy_engines("decode")):  # the streams run on meanwhile
            assert time.monotonic() - killed < ROUTER_DROPS_WITHIN_S, "a router still routes to the killed engine"
            time.sleep(0.5)
        dropped = time.monotonic() - killed

    streams = _streamed(cluster, kill)
    after = cluster.migrations()
    moved = after.get("moved", 0) - before.get("moved", 0)
    refused = after.get("refused", 0) - before.get("refused", 0)
    on_victim = int(moved + refused)  # each stream on the killed host moved or was refused once
    outcomes = [s.outcome for s in streams]
    waits = [round(longest_wait(s.arrivals, s.ended_at, killed), 1) for s in streams]
    print(
        f"\nkilled {victim['name']} with {len(PROMPTS)} streams open: {on_victim} were on it"
        f" ({moved:g} moved, {refused:g} refused); longest wait for a token after the kill per stream {waits} s;"
        f" outcomes {sorted(set(outcomes))}; both routers dropped its engine {dropped:.1f} s after the kill"
    )
    assert 1 <= on_victim < len(PROMPTS), f"{on_victim} of {len(PROMPTS)} streams were on the killed host"
    assert "connection dropped" not in outcomes
    # No stream waits more than 10 s: a moved one resumes within it, a refused one has its error by then.
    assert max(waits) <= END_WITHIN_S
    completed = [(s, r) for s, r in zip(streams, reference, strict=True) if s.outcome == "completed"]
    assert len(completed) >= len(PROMPTS) - refused
    assert all(len(s.token_ids) == MAX_TOKENS for s, _ in completed)
    # How far each stream matched the uninterrupted run is reported, not asserted: which streams
    # moved the routers chose and the test cannot tell, and a moved stream's continuation is
    # prefilled afresh on another engine whose CPU arithmetic may flip a near-tie of this random
    # model (runs alone matched 6/6 and 5/6). Exactness of
    # moved streams is tested where each stream's move is known (tests/serving/test_migration_faults.py).
    at_kill = [max((n for t, n in zip(s.arrivals, s.received, strict=True) if t <= killed), default=0) for s in streams]
    diverged = [next((i for i, (a, b) in enumerate(zip(s.token_ids, r.token_ids, strict=True)) if a != b), None)
                for s, r in completed]  # fmt: skip
    print(f"tokens before the kill per stream {at_kill}; first token differing from the uninterrupted run {diverged}")
    # Counted in tokens: the running usage each client last received, and its token ids.
    assert all(s.completion_tokens == len(s.token_ids) for s in streams)
    received = {("pro", "input"): float(sum(s.prompt_tokens for s in streams)),
                ("pro", "output"): float(sum(s.completion_tokens for s in streams))}  # fmt: skip
    billed = cluster.billed_since(billed_before, received)
    print(f"tokens received by the client {received}, billed {billed}")
    assert billed == received

    back = cluster.wait_for_hosts("decode", 2, RECOVER_WITHIN_S)
    (replacement,) = [h for h in back if h["name"] != decode[1]["name"]]
    assert replacement["name"] != victim["name"]
    while not all(n == 2 for n in cluster.healthy_engines("decode")):
        assert time.monotonic() - killed < RECOVER_WITHIN_S, "the routers did not register the new decode engine"
        time.sleep(2)
    print(
        f"new decode host {replacement['name']}; both routers had 2 healthy decode engines again"
        f" {time.monotonic() - killed:.0f} s after the kill"
    )
