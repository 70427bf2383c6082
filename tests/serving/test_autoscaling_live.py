"""glmserve's scaling policy inside a live Serve controller, reading a real Prometheus that scrapes
the stack: a colocated pool at 0 replicas scales to two when streams wait in the router (three
replicas' worth), and back to zero when idle, losing no stream.

Serve cannot see the router's queue (a queued request reaches no handle), so without Prometheus
the pool would stay at 0 (Serve's own wake-up needs a handle's queued call), and a running pool at
1 (its engine runs at most SLOTS, Serve's count stops there): the scale-up comes from the router's
gauges."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from glmserve.common.ports import free_port
from glmserve.serving.autoscaling import queries
from tests.helpers.prometheus import Prometheus, prometheus
from tests.serving.conftest import Stack, run_stack, self_signed

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
SLOTS = 2  # --max-ongoing-requests: what one engine runs, and the policy's sequences per replica
STREAMS = 3 * SLOTS  # kept in flight: demand of 3 replicas against a maximum of 2
MAX_TOKENS = 48
DOWNSCALE_DELAY_S = 15
COLD_START_S = 240  # a replica's start on this machine's shared cores, with margin


@dataclass(frozen=True)
class Live:
    stack: Stack
    prometheus: Prometheus
    router_metrics: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("autoscaling-live")
    tls = self_signed(tmp)
    port = free_port()
    # Prometheus first: Ray's controller reads its address (RAY_PROMETHEUS_HOST) when Ray starts.
    with prometheus(tmp, f"https://127.0.0.1:{port}/metrics/sd", tls[0]) as prom:
        flags = ["--router", "on", "--autoscaling-policy", "glmserve", "--replicas", "0", "--max-replicas", "2"]
        flags += ["--max-ongoing-requests", str(SLOTS), "--downscale-delay-s", str(DOWNSCALE_DELAY_S)]
        flags += ["--queue-ttl-s", str(COLD_START_S)]
        for stack in run_stack(tmp, flags, {"RAY_PROMETHEUS_HOST": prom.url}, port=port, tls=tls):
            yield Live(stack, prom, stack.router_metrics_url)


def _router(live: Live) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(live.router_metrics, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


@dataclass
class Streams:
    """STREAMS clients, each sending a stream as soon as its last one ended, until stopped."""

    live: Live
    done: list[tuple[int, str | None, str | None]]  # (tokens, finish reason, error) per stream
    stop: threading.Event

    def client(self, i: int) -> None:
        # No retries (a 503 must show), and a wait as long as a cold start.
        client = self.live.stack.client(max_retries=0, timeout=COLD_START_S + 60)
        while not self.stop.is_set():
            tokens, finish, error = 0, None, None
            try:
                stream = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"{i}: {len(self.done)} tell a story."}],
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            except Exception as exc:  # recorded: the test reports every failed stream
                error = repr(exc)
            self.done.append((tokens, finish, error))


def _until(what: str, check: object, timeout_s: float, live: Live) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s; router: {_router(live)}"
        time.sleep(0.5)
    return time.monotonic() - started


def test_policy_scales_from_zero_up_under_load_and_back_to_zero_losing_nothing(live: Live) -> None:
    workers = "glmserve_router_workers"
    pool = "glmserve_router_pool_requests"
    assert _sum(_router(live), workers, role="decode") == 0  # --replicas 0: nothing started
    # Every signal the policy reads exists in Prometheus already, at 0 (none of it is absent).
    by_signal = queries(MODEL, "Engine", "colocated")
    _until(
        "the router's pool gauges scraped",
        lambda: all(live.prometheus.query(by_signal[s]) for s in ("running", "queued_requests", "kv_cache_usage")),
        60,
        live,
    )
    streams = Streams(live, [], threading.Event())
    threads = [threading.Thread(target=streams.client, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    kv = "glmserve_router_pool_kv_cache_usage"
    peak_running = peak_kv = 0.0
    try:
        cold = _until(
            "a replica from zero", lambda: _sum(_router(live), workers, role="decode") >= 1, COLD_START_S, live
        )

        def two_busy() -> bool:
            nonlocal peak_running, peak_kv
            now = _router(live)
            peak_running = max(peak_running, _sum(now, pool, role="decode", state="running"))
            peak_kv = max(peak_kv, _sum(now, kv, role="decode"))
            return _sum(now, workers, role="decode") == 2 and peak_running > SLOTS and peak_kv > 0

        grown = _until("a second replica running streams", two_busy, COLD_START_S, live)
    finally:
        streams.stop.set()
        for t in threads:
            t.join()
    # The engines' own KV use, current: back to 0 once idle, while the replicas still run.
    _until(
        "KV use 0 on the idle replicas",
        lambda: _sum(now := _router(live), kv, role="decode") == 0 and _sum(now, workers, role="decode") >= 1,
        DOWNSCALE_DELAY_S / 2,
        live,
    )
    gone = _until("back to zero", lambda: _sum(_router(live), workers, role="decode") == 0, 180, live)
    failed = [d for d in streams.done if d[2] or d[1] != "length" or d[0] != MAX_TOKENS]
    after = _router(live)
    cold_starts = _sum(after, "glmserve_router_cold_start_seconds_count", model=MODEL)
    print(
        f"autoscaling live: first replica {cold:.0f} s after the first request, both running streams {grown:.0f} s "
        f"later, 2 -> 0 {gone:.0f} s "
        f"after the load stopped; {len(streams.done)} streams, {len(failed)} failed; peak running {peak_running:.0f}, "
        f"peak KV use {peak_kv:.4f}"
    )
    assert failed == [], failed
    assert len(streams.done) >= STREAMS
    assert cold_starts >= 1  # the router timed the cold start
