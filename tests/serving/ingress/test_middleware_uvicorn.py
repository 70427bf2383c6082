"""RequestLimitsMiddleware behind the server Ray Serve runs it in (uvicorn with httptools): a
refused body is not read, and its connection is closed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from glmserve.common.ports import free_port
from glmserve.serving.ingress.limits import RequestLimits
from glmserve.serving.ingress.middleware import RequestLimitsMiddleware


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    limits = RequestLimits(max_body_bytes=1 << 20)
    app = Starlette(
        routes=[Route("/", _echo, methods=["POST"])],
        middleware=[Middleware(RequestLimitsMiddleware, limits=lambda: limits)],
    )
    chosen = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=chosen, http="httptools", log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield chosen
    server.should_exit = True
    thread.join(10)


def _exchange(port: int, head: bytes, body: bytes = b"") -> tuple[bytes, bool]:
    """The response to `head` + `body`, and whether the server closed the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received:
            received += conn.recv(65536)
        time.sleep(0.2)
        conn.setblocking(False)
        try:
            closed = conn.recv(65536) == b""
        except BlockingIOError:
            closed = False
        return received, closed


def test_a_declared_64_mib_body_gets_413_unsent_and_the_connection_closes(port: int) -> None:
    head = b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % (64 << 20)
    response, closed = _exchange(port, head)
    assert response.startswith(b"HTTP/1.1 413")
    assert b"body_too_large" in response
    assert closed


def test_a_body_within_the_limit_keeps_the_connection(port: int) -> None:
    response, closed = _exchange(port, b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\n", b"hello")
    assert response.startswith(b"HTTP/1.1 200")
    assert not closed


def test_a_256_kib_header_gets_431(port: int) -> None:
    head = b"POST / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * (256 << 10) + b"\r\ncontent-length: 0\r\n\r\n"
    response, closed = _exchange(port, head)
    assert response.startswith(b"HTTP/1.1 431")
    assert closed
