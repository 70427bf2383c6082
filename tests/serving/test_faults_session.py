"""Faults on the session stack, through real processes: its limits store (a real redis-server)
frozen, killed and started again under the running router and ingress; a client that hangs up
mid-stream, seen from the engine's own counters and the tokens its tenant is billed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests.admission.redis_server import RedisServer
from tests.helpers.scrape import scraped, total
from tests.serving.conftest import Stack
from tests.serving.tenants import KEYS, RPM

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
HI = [{"role": "user", "content": "hi"}]
# The store's client gives up after 0.5 s and the limiter retries it 1 s after a failure: an
# admission during an outage costs at most about a second, never a hang.
OUTAGE_ANSWER_S = 3.0
STORE_RETRY_S = 1.0


def _post(stack: Stack, key: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    with httpx.Client(verify=str(stack.cert), timeout=60) as http:
        r = http.post(
            f"{stack.base_url}/chat/completions",
            json={"model": MODEL, "messages": HI, "max_tokens": 1},
            headers={"authorization": f"Bearer {key}"},
        )
    return r, time.monotonic() - started


def _router_metrics_url(stack: Stack) -> str:
    line = next(x for x in stack.log.read_text().splitlines() if "glmserve: router: " in x)
    return line.split("(metrics ", 1)[1].rstrip(")").strip()


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_redis_outage_fails_open_and_the_limits_return_with_redis(stack: Stack, stack_redis: RedisServer) -> None:
    """The stack's documented policy is fail-open (`--limits-outage`, default): while Redis is
    frozen or down the router admits on its own share of each plan limit (the whole limit with one
    router), answering at once; when Redis is back the store decides again, with nothing restarted."""
    router = _router_metrics_url(stack)
    key = KEYS["outage"]  # plan tiny-rpm: RPM requests a minute
    assert _post(stack, key)[0].status_code == 200
    assert scraped(router, "glmserve_admission_store_up") == 1
    fail_open_before = scraped(router, "glmserve_admission_fail_open_decisions_total")
    assert stack_redis.process is not None

    os.kill(stack_redis.process.pid, signal.SIGSTOP)  # frozen: connections open, nothing answers
    try:
        frozen = [_post(stack, key) for _ in range(RPM + 1)]
        assert [r.status_code for r, _ in frozen] == [200] * RPM + [429], [r.text for r, _ in frozen]
        assert max(seconds for _, seconds in frozen) < OUTAGE_ANSWER_S, frozen
        assert frozen[0][0].headers["x-ratelimit-limit-requests"] == str(RPM)
        assert scraped(router, "glmserve_admission_store_up") == 0
        assert scraped(router, "glmserve_admission_fail_open_decisions_total") == fail_open_before + RPM + 1
    finally:
        stack_redis.process.kill()  # a stopped process takes SIGKILL at once
        stack_redis.stop()
    # Down (connection refused): still served on the local limits; the tenant's local minute is spent.
    down, seconds = _post(stack, key)
    assert down.status_code == 429 and seconds < OUTAGE_ANSWER_S, down.text
    assert scraped(router, "glmserve_admission_fail_open_decisions_total") == fail_open_before + RPM + 2

    print(f"redis outage: frozen answers in {max(s for _, s in frozen):.2f} s at most, down {seconds:.2f} s")
    stack_redis.start()  # same port, empty: the buckets start over
    time.sleep(STORE_RETRY_S)
    back = [_post(stack, key)[0] for _ in range(RPM + 1)]
    assert [r.status_code for r in back] == [200] * RPM + [429], [r.text for r in back]
    assert [int(r.headers["x-ratelimit-remaining-requests"]) for r in back] == [RPM - 1 - i for i in range(RPM)] + [0]
    assert scraped(router, "glmserve_admission_store_up") == 1
    # decided by the store again, not by the local fallback
    assert scraped(router, "glmserve_admission_fail_open_decisions_total") == fail_open_before + RPM + 2


def _engines(stack: Stack, name: str) -> float:
    """A vLLM series summed over the stack's engine replicas, as Ray exports it."""
    return scraped(stack.metrics_url, f"ray_vllm_{name}")


# Ray exports its workers' metrics every `metrics_report_interval_ms` (10 s by default): a series
# read through it is settled only once it has not changed for longer than that.
RAY_EXPORT_QUIET_S = 12.0


def _settled(read: Callable[[], float], quiet_s: float, timeout_s: float) -> float:
    """`read()` once it has not changed for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"still changing after {timeout_s} s: {value}"
        time.sleep(1.0)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def _billed(stack: Stack, plan: str) -> float:
    with stack.http() as http:
        text = http.get(f"{stack.root}/metrics").text
    return total(text, "glmserve_ingress_tokens_total", plan=plan, direction="output")


HANGUP_MAX_TOKENS = 4000  # minutes of generation on this machine: only an abort ends it early
HANGUP_AFTER = 24  # tokens the client reads before it goes away
# The abort reaches the engine within a few of its steps (one token each for a lone sequence).
ABORT_BOUND = 64


def test_a_client_hanging_up_stops_its_engine_and_is_billed_the_tokens_generated(stack: Stack) -> None:
    """The engine's own counters: it stops generating within a bound once the client went away
    (the engine aborts the request), and the tenant's plan is billed every token the engine
    generated for it (tokens, not SSE events), those of the last batch it had not sent yet too:
    the ingress reads the aborted stream to its end, whose usage counts them."""
    generated_before = _settled(lambda: _engines(stack, "generation_tokens_total"), RAY_EXPORT_QUIET_S, timeout_s=60)
    billed_before = _billed(stack, "hangup")
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": HANGUP_MAX_TOKENS, "ignore_eos": True, "temperature": 0, "stream": True,
        "return_token_ids": True, "thinking": {"type": "disabled"},
    }  # fmt: skip
    delivered = 0
    with (
        httpx.Client(verify=str(stack.cert), timeout=120) as http,
        http.stream(
            "POST",
            f"{stack.base_url}/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEYS['hangup']}"},
        ) as streamed,
    ):
        assert streamed.status_code == 200
        for line in streamed.iter_lines():
            if line.startswith("data: {"):
                delivered += sum(len(c.get("token_ids") or []) for c in json.loads(line[6:])["choices"])
            if delivered >= HANGUP_AFTER:
                break  # closing the stream closes the connection
    hung_up = time.monotonic()
    _until(lambda: _engines(stack, "num_requests_running") == 0, 60, "the engine still runs the request")
    generated = _settled(lambda: _engines(stack, "generation_tokens_total"), RAY_EXPORT_QUIET_S, timeout_s=60)
    generated -= generated_before
    billed = _settled(lambda: _billed(stack, "hangup"), quiet_s=2, timeout_s=30) - billed_before
    print(f"hang-up: delivered {delivered}, engine generated {generated:.0f}, billed {billed:.0f}, "
          f"engine idle {time.monotonic() - hung_up:.1f} s after")  # fmt: skip
    assert delivered <= generated <= delivered + ABORT_BOUND
    assert billed == generated
