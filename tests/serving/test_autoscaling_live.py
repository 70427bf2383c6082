"""glmserve's scaling policy inside a live Serve controller, reading a real Prometheus that scrapes
the stack: a colocated pool at 0 replicas scales to one when a stream waits in the router and to
two when streams wait (three replicas' worth); when the load stops, 2 -> 1 stops the idle replica
and keeps the newest one, which still runs a stream (Serve alone would stop the newest), then
1 -> 0 once that stream ended; no stream is lost.

Serve cannot see the router's queue (a queued request reaches no handle), so without Prometheus
the pool would stay at 0 (Serve's own wake-up needs a handle's queued call), and a running pool at
1 (its engine runs at most SLOTS, Serve's count stops there): the scale-up comes from the router's
gauges. The SLOs are set out of reach, so that the pool scales on its sequences alone (the latency
terms are tests/common/test_autoscaling.py's): 1 stream on 2 replicas of SLOTS is below the
policy's scale-down band, 2 are not."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from openai import OpenAI, Stream
from openai.types.chat import ChatCompletionChunk
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
# The stream kept on the newest replica through 2 -> 1: placed within seconds of the load's end,
# it must outlast the policy's delay plus Prometheus's scrape and Ray's 5 s fetch.
LONG_S = 45
REGISTERED_APART_S = 2.0  # more than the router's metrics refresh (1 s) and this test's polling


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
        flags += ["--queue-ttl-s", str(COLD_START_S), "--ttft-slo-s", "600", "--itl-slo-s", "10"]
        for stack in run_stack(tmp, flags, {"RAY_PROMETHEUS_HOST": prom.url}, port=port, tls=tls):
            yield Live(stack, prom, stack.router_metrics_url)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _router(live: Live) -> Samples:
    text = httpx.get(live.router_metrics, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def _replicas(samples: Samples) -> dict[str, float]:
    """Each decode replica registered with the router (its Serve replica id) -> its requests."""
    return {
        labels["worker"]: v
        for (n, ls), v in samples.items()
        if n == "glmserve_router_worker_requests" and (labels := dict(ls)).get("role") == "decode"
    }


@dataclass
class Outcome:
    tokens: int = 0
    finish: str | None = None
    error: str | None = None
    first_token: float | None = None
    ended: float | None = None
    stream: Stream[ChatCompletionChunk] | None = None  # while it runs: a client may hang up

    def tokens_per_s(self) -> float:
        assert self.first_token is not None and self.ended is not None
        return self.tokens / max(1e-3, self.ended - self.first_token)


def _stream(client: OpenAI, prompt: str, max_tokens: int, out: Outcome) -> None:
    try:
        out.stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in out.stream:
            if out.first_token is None and chunk.choices:
                out.first_token = time.monotonic()
            if chunk.choices and chunk.choices[0].finish_reason:
                out.finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                out.tokens = chunk.usage.completion_tokens
    except Exception as exc:  # recorded: the test reports every failed stream
        out.error = repr(exc)
    out.ended = time.monotonic()


def _client(live: Live) -> OpenAI:
    # No retries (a 503 must show), and a wait as long as a cold start.
    return live.stack.client(max_retries=0, timeout=COLD_START_S + 60)


@dataclass
class Streams:
    """Clients each sending a stream as soon as its last one ended, until stopped."""

    live: Live
    done: list[tuple[int, Outcome]] = field(default_factory=list)  # (client, outcome) per stream
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: range) -> None:
        for i in clients:
            self.threads.append(threading.Thread(target=self._client, args=(i,)))
            self.threads[-1].start()

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _client(self, i: int) -> None:
        client = _client(self.live)
        while not self.stop.is_set():
            out = Outcome()
            _stream(client, f"{i}: {len(self.done)} tell a story.", MAX_TOKENS, out)
            self.done.append((i, out))


def _until(what: str, check: Callable[[], bool], timeout_s: float, live: Live) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s; router: {_router(live)}"
        time.sleep(0.5)
    return time.monotonic() - started


def _start(client: OpenAI, prompt: str, max_tokens: int) -> tuple[Outcome, threading.Thread]:
    out = Outcome()
    thread = threading.Thread(target=_stream, args=(client, prompt, max_tokens, out))
    thread.start()
    return out, thread


def _one_stream_on(live: Live, replica: str, other: str, max_tokens: int) -> tuple[Outcome, threading.Thread, int]:
    """A stream running on `replica` and none on `other`, and how many streams the test hung up to
    get there. The router picks where a stream runs (the less loaded replica first), so the test
    sends one; if it runs on `other`, it sends a second and hangs up the first once the second runs
    on `replica`. The router's per-replica gauge follows the engines' heartbeats (every 2 s)."""
    _until("the load's last heartbeats", lambda: sum(_replicas(_router(live)).values()) == 0, 30, live)
    client = _client(live)
    first, first_thread = _start(client, "A long story.", max_tokens)
    _until("the stream running", lambda: sum(_replicas(_router(live)).values()) >= 1, 30, live)
    if _replicas(_router(live)).get(replica) == 1:
        return first, first_thread, 0
    second, second_thread = _start(client, "Another long story.", max_tokens)
    _until("a second stream running on the other replica", lambda: _replicas(_router(live)).get(replica) == 1, 30, live)
    assert first.stream is not None
    first.stream.close()  # the client hangs up
    first_thread.join()
    _until("the hung-up stream gone", lambda: _replicas(_router(live)).get(other) == 0, 30, live)
    return second, second_thread, 1


def test_policy_scales_from_zero_up_under_load_and_down_to_zero_stopping_the_idle_replica(live: Live) -> None:
    workers = "glmserve_router_workers"
    pool = "glmserve_router_pool_requests"
    assert _sum(_router(live), workers, role="decode") == 0  # --replicas 0: nothing started
    # Every signal the policy reads exists in Prometheus already, at 0 (none of it is absent).
    by_signal = queries(MODEL, "Engine", "colocated")
    _until(
        "the router's pool gauges scraped",
        lambda: all(live.prometheus.query(by_signal[s]) for s in ("running", "queued_requests")),
        60,
        live,
    )
    registered: dict[str, float] = {}  # replica -> when the router first listed it

    def at_least(n: int) -> bool:
        for replica in _replicas(_router(live)):
            registered.setdefault(replica, time.monotonic())
        return len(registered) >= n

    streams = Streams(live)
    streams.start(range(1))  # one stream waits: the pool starts one replica
    peak_running = 0.0
    try:
        cold = _until("a replica from zero", lambda: at_least(1), COLD_START_S, live)
        (oldest,) = registered

        # One stream alone on an engine: its pace sizes the long stream below.
        def two_ended() -> bool:
            at_least(2)  # the second replica may register meanwhile: when is noted
            return len(streams.done) >= 2

        _until("two streams on the first replica", two_ended, 60, live)
        tokens_per_s = max(out.tokens_per_s() for _, out in streams.done if out.first_token is not None)
        streams.start(range(1, STREAMS))

        def two_busy() -> bool:
            nonlocal peak_running
            at_least(2)
            now = _router(live)
            peak_running = max(peak_running, _sum(now, pool, role="decode", state="running"))
            return _sum(now, workers, role="decode") == 2 and peak_running > SLOTS

        grown = _until("a second replica running streams", two_busy, COLD_START_S, live)
    finally:
        streams.end()
    (newest,) = set(registered) - {oldest}
    # Serve counts a replica running on the control-loop tick after its constructor returned, which
    # is when it registers with the router: seconds apart here, Serve's running order is this one.
    apart = registered[newest] - registered[oldest]
    assert apart > REGISTERED_APART_S, apart

    # The newest replica runs a stream, the oldest nothing: Serve's own choice, the newest, would
    # cost that stream a drain; glmserve's stops the idle one.
    load_ended = time.monotonic()
    long_tokens = int(tokens_per_s * LONG_S)
    long, long_thread, hung_up = _one_stream_on(live, newest, oldest, long_tokens)
    placed = time.monotonic() - load_ended
    shrunk = _until("2 -> 1", lambda: _sum(_router(live), workers, role="decode") == 1, 120, live)
    kept = _replicas(_router(live))
    long_in_flight = long.ended is None
    long_thread.join()
    assert set(kept) == {newest}, f"kept {kept}; the oldest {oldest} was idle, the newest {newest} ran a stream"
    assert long_in_flight, "the long stream ended before the scale-down: nothing told the replicas apart"
    assert (long.error, long.finish, long.tokens) == (None, "length", long_tokens), long

    gone = _until("back to zero", lambda: _sum(_router(live), workers, role="decode") == 0, 180, live)
    failed = [out for _, out in streams.done if out.error or out.finish != "length" or out.tokens != MAX_TOKENS]
    after = _router(live)
    cold_starts = _sum(after, "glmserve_router_cold_start_seconds_count", model=MODEL)
    assert long.first_token is not None and long.ended is not None
    print(
        f"autoscaling live: first replica {cold:.0f} s after the first request, the second registered {apart:.0f} s "
        f"later, both running streams {grown:.0f} s after the load grew; {len(streams.done)} streams, "
        f"{len(failed)} failed; peak running {peak_running:.0f}. Load stopped: a stream of {long_tokens} tokens "
        f"on the newest replica {placed:.0f} s later ({hung_up} hung up), 2 -> 1 after {shrunk:.0f} s more, "
        f"keeping it; the stream ran {long.ended - long.first_token:.0f} s; 1 -> 0 {gone:.0f} s after"
    )
    assert failed == [], failed
    assert len(streams.done) >= STREAMS
    assert cold_starts >= 1  # the router timed the cold start
