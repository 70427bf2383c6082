"""Tenants and plans at the ingress: keys, plan limits in Redis, OpenAI's headers, settlement,
and per-tenant prefix-cache isolation."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.serving.conftest import Stack
from tests.serving.tenants import KEYS, OUTPUT_TPM, RPM

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
HI = [{"role": "user", "content": "hi"}]
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def _post(stack: Stack, key: str | None, **body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(verify=str(stack.cert), timeout=120) as http:
        return http.post(f"{stack.base_url}/chat/completions", json={"model": MODEL, "messages": HI, **body},
                         headers=headers)  # fmt: skip


@pytest.mark.parametrize(("key", "reason"), [(None, "missing"), ("sk-not-a-tenant", "unknown")])
def test_requests_without_a_valid_key_get_401(stack: Stack, key: str | None, reason: str) -> None:
    r = _post(stack, key, max_tokens=1)
    assert r.status_code == 401, (reason, r.text)
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert "sk-" not in error["message"]  # keys are never echoed
    with pytest.raises(openai.AuthenticationError):
        stack.client(api_key="sk-wrong").chat.completions.create(model=MODEL, messages=HI, max_tokens=1)


def test_model_outside_the_plan_gets_403(stack: Stack) -> None:
    r = _post(stack, KEYS["nomodel"], max_tokens=1)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_in_plan"


def test_plan_output_and_context_limits_are_400s_naming_the_limit(stack: Stack) -> None:
    too_long = _post(stack, KEYS["small"], max_tokens=64)
    assert too_long.status_code == 400 and "max_output_tokens" in too_long.json()["error"]["message"]
    prompt = [{"role": "user", "content": "word " * 400}]
    huge = _post(stack, KEYS["small"], messages=prompt, max_tokens=8)
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"
    ok = _post(stack, KEYS["small"], max_tokens=8)
    assert ok.status_code == 200


def test_rate_limit_answers_like_openai(stack: Stack) -> None:
    answers = [_post(stack, KEYS["rpm"], max_tokens=1) for _ in range(RPM + 1)]
    assert [a.status_code for a in answers] == [200] * RPM + [429]
    for ok in answers[:RPM]:
        assert all(h in ok.headers for h in RATE_HEADERS)
    assert [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers[:RPM]] == [
        RPM - 1 - i for i in range(RPM)
    ]
    refused = answers[-1]
    assert refused.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_output_tokens_are_reserved_then_settled_to_what_was_used(stack: Stack) -> None:
    """Reserve max_tokens at admission; a stream the client abandons after a few tokens gives the
    rest back."""
    first = _post(stack, KEYS["tokens"], max_tokens=10)
    assert first.status_code == 200
    after_first = int(first.headers["x-ratelimit-remaining-tokens"])  # reservation of 10 taken
    with (
        httpx.Client(verify=str(stack.cert), timeout=120) as http,
        http.stream(
            "POST",
            f"{stack.base_url}/chat/completions",
            json={"model": MODEL, "messages": HI, "max_tokens": 100, "stream": True, "ignore_eos": True},
            headers={"authorization": f"Bearer {KEYS['tokens']}"},
        ) as streamed,
    ):
        assert streamed.status_code == 200
        reserved_left = int(streamed.headers["x-ratelimit-remaining-tokens"])
        assert reserved_left <= after_first - 100 + 5  # 100 reserved (+ a little refill)
        for n, _ in enumerate(streamed.iter_lines()):
            if n >= 3:
                break  # the client goes away after a few tokens
    time.sleep(2)  # settlement happens when the ingress notices the disconnect
    probe = _post(stack, KEYS["tokens"], max_tokens=1)
    assert probe.status_code == 200
    # Most of the abandoned stream's 100-token reservation came back.
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) >= reserved_left + 50
    assert int(probe.headers["x-ratelimit-limit-tokens"]) == OUTPUT_TPM


def _cached(stack: Stack, key: str, text: str) -> int:
    r = stack.client(api_key=key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=1, temperature=0
    )
    assert r.usage and r.usage.prompt_tokens_details is not None
    return r.usage.prompt_tokens_details.cached_tokens or 0


def test_prefix_caches_are_isolated_per_tenant_and_shared_within_a_group(stack: Stack) -> None:
    text = "Shared system prompt of a coding agent working on the glmserve repository. " * 30
    assert _cached(stack, KEYS["acme"], text) == 0
    assert _cached(stack, KEYS["acme"], text) > 0  # same tenant: hit
    assert _cached(stack, KEYS["beta"], text) == 0  # another tenant: no cross-tenant hit
    group_text = text.replace("coding", "review")
    assert _cached(stack, KEYS["team-a1"], group_text) == 0
    assert _cached(stack, KEYS["team-a2"], group_text) > 0  # the plan's sharing group shares
