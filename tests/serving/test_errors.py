"""Bad input gets OpenAI's error body with the right status, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.serving.conftest import MAX_ONGOING, MAX_QUEUED, Stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
OK_MESSAGES = [{"role": "user", "content": "hello"}]


def _body(**fields: object) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], **fields}).encode()


BAD_REQUESTS = [
    ("invalid JSON", b'{"model": "glm-4.6-tiny", "messages": [', 400, None),
    ("not an object", b"[1, 2, 3]", 400, None),
    ("invalid UTF-8", _body().replace(b'"x"', b'"\xff\xfe"'), 400, None),
    ("wrong type", _body(messages="hello"), 400, "messages"),
    ("negative max_tokens", _body(max_tokens=-3), 400, "max_tokens"),
    ("temperature type", _body(temperature="hot"), 400, "temperature"),
    ("empty messages", _body(messages=[]), 400, "messages"),
    ("unknown role", _body(messages=[{"role": "wizard", "content": "x"}]), 400, "messages"),
    ("unknown model", _body(model="gpt-5"), 404, "model"),
    ("max_tokens over context", _body(max_tokens=100000), 400, "max_tokens"),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_openai_error(stack: Stack, case: str, body: bytes, status: int, param: str | None) -> None:
    with stack.http() as http:
        r = http.post(f"{stack.base_url}/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"] and error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
        # ...and the server still answers a good request.
        ok = http.post(
            f"{stack.base_url}/chat/completions", json={"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 1}
        )
        assert ok.status_code == 200, ok.text


def test_prompt_plus_max_tokens_over_context_says_the_limits(stack: Stack) -> None:
    long_text = "word " * 5000  # about 5000+ tokens
    with pytest.raises(openai.BadRequestError) as exc:
        stack.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=4000
        )
    message = exc.value.message
    assert "8192" in message  # the model's context, stated to the client


def test_unknown_model_via_sdk(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        stack.client().chat.completions.create(model="nope", messages=OK_MESSAGES)
    assert exc.value.code == "model_not_found"


def test_unknown_route_is_an_openai_404(stack: Stack) -> None:
    with stack.http() as http:
        r = http.get(f"{stack.base_url}/assistants")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_overload_answers_503_with_retry_after(stack: Stack) -> None:
    """More concurrent requests than the engine admits: the excess is refused, not queued forever.
    The router's queue holds it for its TTL (30 s): answers long enough that no slot frees by then."""
    n = 3 * (MAX_ONGOING + MAX_QUEUED)

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        body = {"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 2000, "temperature": 0, "ignore_eos": True}
        return await client.post(f"{stack.base_url}/chat/completions", json=body)

    async def burst() -> list[httpx.Response]:
        headers = {"authorization": f"Bearer {stack.api_key}"}
        async with httpx.AsyncClient(verify=str(stack.cert), timeout=300, headers=headers) as client:
            return await asyncio.gather(*(one(client) for _ in range(n)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused and statuses.count(200) >= MAX_ONGOING
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "service_unavailable"
