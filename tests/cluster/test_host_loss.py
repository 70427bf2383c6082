"""Losing a decode host: its streams end (never hang), the pod comes back as a new host, and new
requests succeed again. Runs last in the package (it replaces the decode host)."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from openai import OpenAI

from tests.cluster.conftest import RunningCluster

pytestmark = pytest.mark.slow

STREAMS = 3
END_WITHIN_S = 10.0
RECOVER_WITHIN_S = 300.0


def test_streams_on_a_killed_decode_host_end_and_the_host_comes_back(tiny_cluster: RunningCluster) -> None:
    key = tiny_cluster.pro_key
    client = OpenAI(base_url=tiny_cluster.base_url, api_key=key, timeout=60, max_retries=0)
    started = threading.Barrier(STREAMS + 1)
    ended: dict[int, tuple[float, str]] = {}

    def stream(i: int) -> None:
        outcome = "completed"
        try:
            chunks = client.chat.completions.create(
                model=tiny_cluster.model,
                messages=[{"role": "user", "content": f"long answer {i}"}],
                max_tokens=2000,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            first = True
            for _ in chunks:
                if first:
                    started.wait(timeout=120)
                    first = False
        except openai.APIConnectionError:
            outcome = "connection dropped"
        except openai.APIError as exc:  # the ingress's OpenAI error event
            outcome = f"error event: {exc.message}"
        ended[i] = (time.monotonic(), outcome)

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(STREAMS)]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    (decode,) = tiny_cluster.hosts(pool="decode")
    killed = time.monotonic()
    tiny_cluster.kill_host(decode["name"])
    for t in threads:
        t.join(timeout=END_WITHIN_S + 5)
    assert len(ended) == STREAMS, f"{STREAMS - len(ended)} stream(s) still open {END_WITHIN_S + 5} s after the kill"
    slowest = max(at - killed for at, _ in ended.values())
    print(f"\nstreams ended {slowest:.1f} s after the kill: {sorted(o for _, o in ended.values())}")
    assert slowest <= END_WITHIN_S
    assert not [o for _, o in ended.values() if o == "connection dropped"], "a stream ended without an error event"
    # Migration is on, but the pool's only decode replica was on the host: no move is tried.
    assert all("no other replica" in o for _, o in ended.values()), sorted(o for _, o in ended.values())

    (new,) = tiny_cluster.wait_for_hosts("decode", 1)
    assert new["name"] != decode["name"]
    recovered = tiny_cluster.first_reply(since=killed, within_s=RECOVER_WITHIN_S)
    print(f"a new request succeeded {recovered:.0f} s after the kill (new host {new['name']})")
