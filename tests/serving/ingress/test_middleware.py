"""RequestLimitsMiddleware where the ingress adds it (inside Starlette's error middleware), driven
over httpx's ASGI transport and, for what a transport hides (what was read), by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from glmserve.serving.ingress.limits import RequestLimits
from glmserve.serving.ingress.middleware import RequestLimitsMiddleware

pytestmark = pytest.mark.asyncio

LIMITS = RequestLimits(max_body_bytes=1000, max_header_bytes=2000, max_headers=20, body_timeout_s=0.3)


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


def _app(limits: RequestLimits = LIMITS) -> Starlette:
    return _limited(lambda: limits)


def _limited(limits: Callable[[], RequestLimits]) -> Starlette:
    middleware = [Middleware(RequestLimitsMiddleware, limits=limits)]
    return Starlette(routes=[Route("/", _echo, methods=["POST"])], middleware=middleware)


async def _post(content: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        return await client.post("/", content=content, headers=headers)


def _openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    assert response.headers["connection"] == "close"


async def test_a_body_within_the_limit_reaches_the_application() -> None:
    response = await _post(b"x" * 1000)
    assert response.status_code == 200 and response.json() == {"received": 1000}


async def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read() -> None:
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-length", b"67108864")],
        "query_string": b"",
    }
    await _app()(scope, receive, send)
    assert reads == 0
    assert sent[0]["status"] == 413


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    async def chunks() -> Any:
        for _ in range(1000):
            yield b"x" * 100

    _openai_error(await _post(chunks()), 413, "body_too_large")


async def test_a_body_that_trickles_past_the_timeout_gets_408() -> None:
    async def slow() -> Any:
        yield b"x"
        await asyncio.sleep(1)
        yield b"x"

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await _post(slow())
    _openai_error(response, 408, "body_timeout")
    assert loop.time() - started < 0.9


@pytest.mark.parametrize(
    ("headers", "what"),
    [({f"x-h{i}": "v" for i in range(25)}, "count"), ({"x-big": "v" * 3000}, "size")],
)
async def test_too_many_or_too_large_headers_get_431(headers: dict[str, str], what: str) -> None:
    _openai_error(await _post(b"{}", headers), 431, "headers_too_large")


async def test_a_content_length_that_is_no_number_gets_400() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("read the body")

    await _app()(
        {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"lots")]}, receive, send
    )
    assert sent[0]["status"] == 400


async def test_the_limits_are_read_for_each_request() -> None:
    current = [LIMITS]
    app = _limited(lambda: current[0])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.post("/", content=b"x" * 2000)).status_code == 413
        current[0] = RequestLimits(max_body_bytes=4000)
        assert (await client.post("/", content=b"x" * 2000)).status_code == 200
