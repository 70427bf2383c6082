"""Abuse and bad input through the real stack: each gets a 4xx OpenAI error (docs/limits.md),
never a 5xx or a hang, and the stack serves normally afterwards."""

from __future__ import annotations

import json
import socket
import ssl
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving.conftest import Stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
HI = [{"role": "user", "content": "hi"}]
SERVER_ERRORS = (500, 502, 504)
FUZZ_EXAMPLES = 40  # per operation; with max_tokens <= 4 the run takes ~1 min on 2 cores


def _serves(stack: Stack) -> None:
    with stack.http() as http:
        r = http.post(f"{stack.base_url}/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 2})
    assert r.status_code == 200, r.text


def _raw_status(stack: Stack, head: bytes) -> tuple[int, float]:
    """Sends `head` alone over TLS; the status line that comes back and how long it took."""
    url = httpx.URL(stack.base_url)
    context = ssl.create_default_context(cafile=str(stack.cert))
    started = time.monotonic()
    with (
        socket.create_connection((url.host, url.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=url.host) as tls,
    ):
        tls.sendall(head)
        status_line = tls.recv(65536).split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), time.monotonic() - started


def test_a_64_mib_body_is_refused_before_it_is_sent(stack: Stack) -> None:
    url = httpx.URL(stack.base_url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {url.host}\r\nauthorization: Bearer {stack.api_key}\r\n"
        f"content-type: application/json\r\ncontent-length: {64 << 20}\r\n\r\n"
    ).encode()
    status, seconds = _raw_status(stack, head)
    assert status == 413
    assert seconds < 10
    _serves(stack)


@pytest.mark.parametrize(
    "headers",
    [{"x-big": "a" * (256 << 10)}, {f"x-h{i}": "v" for i in range(200)}],
    ids=["256 KiB header", "200 headers"],
)
def test_oversized_headers_get_431(stack: Stack, headers: dict[str, str]) -> None:
    with stack.http() as http:
        r = http.post(f"{stack.base_url}/chat/completions", json={"model": MODEL, "messages": HI}, headers=headers)
    assert r.status_code == 431, r.text
    assert r.json()["error"]["code"] == "headers_too_large"
    _serves(stack)


DEEP = b"[" * 100_000 + b"]" * 100_000


def _chat(**fields: object) -> bytes:
    return json.dumps({"model": MODEL, "messages": HI, **fields}).encode()


BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("nested 100k deep", b'{"model":"m","messages":[{"role":"user","content":' + DEEP + b"}]}", 400),
    ("top_logprobs 100000", _chat(logprobs=True, top_logprobs=100_000), 400),
    ("prompt_logprobs -1", _chat(prompt_logprobs=-1), 400),
    ("100 stop strings", _chat(stop=["x"] * 100), 400),
    ("n 1000", _chat(n=1000), 400),
    ("max_tokens 10^30", _chat(max_tokens=10**30), 400),
    ("tools of numbers", _chat(tools=[1, 2]), 400),
    ("tool_choice without tools", _chat(tool_choice="required"), 400),
    ("unknown model", _chat(model="gpt-9"), 404),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_BODIES, ids=[c for c, _, _ in BAD_BODIES])
def test_hostile_bodies_get_openai_4xx_errors(stack: Stack, case: str, body: bytes, status: int) -> None:
    with stack.http() as http:
        r = http.post(f"{stack.base_url}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, (case, r.text)
    assert r.json()["error"]["message"]


def test_a_client_that_keeps_sending_wrong_keys_gets_429_then_others_still_serve(stack: Stack) -> None:
    # From its own loopback address, so that the other tests' client (127.0.0.1) is not throttled.
    transport = httpx.HTTPTransport(
        local_address="127.0.0.2", verify=ssl.create_default_context(cafile=str(stack.cert))
    )
    statuses = []
    with httpx.Client(transport=transport, timeout=60) as guesser:
        for i in range(12):
            r = guesser.post(
                f"{stack.base_url}/chat/completions",
                json={"model": MODEL, "messages": HI, "max_tokens": 1},
                headers={"authorization": f"Bearer sk-guess-{i}"},
            )
            statuses.append(r.status_code)
        assert statuses == [401] * 10 + [429] * 2
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"]["code"] == "too_many_failed_keys"
        # Even a valid key waits: a guesser must not learn which guess was right.
        valid = guesser.post(
            f"{stack.base_url}/chat/completions",
            json={"model": MODEL, "messages": HI, "max_tokens": 1},
            headers={"authorization": f"Bearer {stack.api_key}"},
        )
        assert valid.status_code == 429
    _serves(stack)


def test_fuzzing_the_openapi_document_gets_no_server_error(stack: Stack) -> None:
    with stack.http() as http:
        document = http.get(f"{stack.root}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    operations = {(op.method, op.path): op for op in (r.ok() for r in schema.get_all_operations())}
    assert ("post", "/v1/chat/completions") in operations and ("post", "/v1/completions") in operations
    failures: list[str] = []
    with stack.http() as http:
        for key in [("post", "/v1/chat/completions"), ("post", "/v1/completions"), ("get", "/v1/models/{model}")]:

            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operations[key].as_strategy())
            def call(case: Any) -> None:
                body = case.body
                if isinstance(body, dict):  # to the engines (the model served), briefly
                    body = {**body, "model": MODEL, "max_tokens": 4, "max_completion_tokens": 4, "stream": False}
                url = f"{stack.root}{case.formatted_path}"
                # A GET's body is schemathesis' NOT_SET marker: send none.
                r = http.request(case.method, url, json=body) if case.method == "POST" else http.get(url)
                if r.status_code in SERVER_ERRORS:
                    failures.append(f"{r.status_code} {case.formatted_path} {json.dumps(body)[:300]}: {r.text[:300]}")

            call()
    assert failures == []
    _serves(stack)
