"""Scale-down that loses nothing: Serve's autoscaler removes one of two decode replicas while
streams run on both, and streams outlast Serve's default graceful shutdown timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import Stack, run_stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
SERVE_DEFAULT_DRAIN_S = 20.0  # Ray Serve's graceful_shutdown_timeout_s default
# Serve's autoscaler wants one decode replica from the first one's start (no load against a target
# of 64) and removes the other DOWNSCALE_DELAY_S later, whenever the second one started: the test
# cannot know when. So streams start in waves until the router sees the pool shrink; those in
# flight then run on for up to STREAM_S, more than Serve's default drain.
DOWNSCALE_DELAY_S = 75
WAVE = 4  # streams per wave, two per replica
WAVE_EVERY_S = 10.0
STREAM_S = 80.0  # as sized at OVERLAP streams at once; fewer overlap at first, so they end sooner
OVERLAP = 16  # streams running at once, which sets their pace
EXPORT_LAG_S = 12.0  # vLLM's gauges reach Ray's metrics export ~10 s late


@pytest.fixture(scope="module")
def scaling_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("drain")
    # Decode starts at its maximum of two and may shrink to one.
    config = {
        "disaggregated": True,
        "router": "on",
        "decode": {
            "replicas": 1,
            "initial_replicas": 2,
            "max_replicas": 2,
            "target_ongoing_requests": 64,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
        },
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    yield from run_stack(tmp, ["--config", str(path)])


def _samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(url, timeout=10).text
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def _decode_workers(url: str) -> int:
    return int(sum(v for labels, v in _samples(url, "glmserve_router_workers") if labels.get("role") == "decode"))


def _busy_decode_replicas(stack: Stack) -> set[str]:
    """Decode replicas whose engine runs requests, as vLLM last reported (Ray's export lags ~10 s)."""
    healthy = _samples(stack.metrics_url, "ray_serve_deployment_replica_healthy")
    decode = {labels["replica"] for labels, _ in healthy if labels.get("deployment", "").startswith("Decode:")}
    running = _samples(stack.metrics_url, "ray_vllm_num_requests_running")
    return {labels["ReplicaId"] for labels, value in running if value > 0} & decode


@dataclass
class StreamResult:
    started: float = 0.0
    ended: float = 0.0
    tokens: int = 0
    finish: str | None = None
    error: str | None = None


def _stream(stack: Stack, prompt: str, max_tokens: int, out: StreamResult) -> None:
    out.started = time.monotonic()
    try:
        stream = stack.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                out.finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                out.tokens = chunk.usage.completion_tokens
    except Exception as exc:  # recorded: the test reports every failed stream
        out.error = repr(exc)
    out.ended = time.monotonic()


def _start(stack: Stack, prompts: list[str], max_tokens: int) -> tuple[list[StreamResult], list[threading.Thread]]:
    results = [StreamResult() for _ in prompts]
    threads = [
        threading.Thread(target=_stream, args=(stack, p, max_tokens, r)) for p, r in zip(prompts, results, strict=True)
    ]
    for t in threads:
        t.start()
    return results, threads


def _tokens_per_second(stack: Stack) -> float:
    """One stream's rate while OVERLAP of them run at once, the slowest's."""
    results, threads = _start(stack, [f"{i}: count." for i in range(OVERLAP)], 64)
    for t in threads:
        t.join()
    assert all(r.tokens == 64 for r in results), results
    return min(r.tokens / (r.ended - r.started) for r in results)


def test_scale_down_under_streaming_load_loses_no_stream(scaling_stack: Stack) -> None:
    url = scaling_stack.router_metrics_url
    deadline = time.monotonic() + 10
    while _decode_workers(url) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # registration follows the replica's start by a heartbeat
    assert _decode_workers(url) == 2
    max_tokens = int(_tokens_per_second(scaling_stack) * STREAM_S)
    results: list[StreamResult] = []
    threads: list[threading.Thread] = []
    drain_started = None
    busy: set[str] = set()  # decode replicas running streams, last seen before the scale-down
    late: list[StreamResult] = []  # requests sent while the removed replica drains
    late_threads: list[threading.Thread] = []
    next_wave = time.monotonic()
    deadline = time.monotonic() + DOWNSCALE_DELAY_S + 60
    while drain_started is None and time.monotonic() < deadline:
        if time.monotonic() >= next_wave:
            wave, wave_threads = _start(
                scaling_stack, [f"{len(results) + i}: a story." for i in range(WAVE)], max_tokens
            )
            results, threads, next_wave = results + wave, threads + wave_threads, next_wave + WAVE_EVERY_S
        if time.monotonic() - results[0].started > EXPORT_LAG_S:  # vLLM's gauges now show the waves
            busy = _busy_decode_replicas(scaling_stack) or busy
        if _decode_workers(url) == 1:
            drain_started = time.monotonic()
            in_flight = [r for r in results if r.ended == 0.0]
            late, late_threads = _start(scaling_stack, ["A late one.", "Another late one."], 32)
        time.sleep(0.5)
    for t in threads + late_threads:
        t.join()
    assert drain_started is not None, "the router never saw the decode pool scale from 2 to 1"
    assert in_flight, "no stream was in flight at the scale-down; nothing was drained"
    # Both replicas ran the waves' streams, so the one Serve removed (its choice) had some to drain.
    assert len(busy) == 2, busy
    failed = [r for r in results + late if r.error or r.finish != "length"]
    assert failed == [], failed
    assert all(r.tokens == max_tokens for r in results), [r.tokens for r in results]
    assert all(r.tokens == 32 for r in late), [r.tokens for r in late]
    # Streams in flight at the scale-down ran past it by more than Serve's default timeout allows.
    outlived = max(r.ended for r in in_flight) - drain_started
    print(
        f"drain: {len(results)} streams of {max_tokens} tokens, {len(in_flight)} in flight at the scale-down, "
        f"the last ending {outlived:.1f} s after it"
    )
    assert outlived > SERVE_DEFAULT_DRAIN_S, outlived
    assert _decode_workers(url) == 1
