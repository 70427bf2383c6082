"""ASGI middleware that enforces RequestLimits on what uvicorn hands the application: header
size and count (431), body size (413, from Content-Length before any byte of the body is read,
else as it arrives) and the time a client takes to send its body (408).

Each refusal is an OpenAI error body with `Connection: close`, so uvicorn drops the connection
instead of reading and discarding the rest of a body the application will never read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmserve.serving.ingress.errors import error_response
from glmserve.serving.ingress.limits import MIB, RequestLimits


class Refused(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, limits: Callable[[], RequestLimits]) -> None:
        """`limits`: read once per request (the serving replica's settings are known only once
        it runs, after the app was built)."""
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits()
        try:
            _check_headers(scope, limits)
        except Refused as exc:
            await _refuse(exc, send)
            return
        body = _Body(receive, limits)
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, send_started)
        except Refused as exc:
            # The application was still reading the body, so nothing was sent yet.
            if started:
                raise
            await _refuse(exc, send)


class _Body:
    """The request's receive(), counting and timing the body as the application reads it."""

    def __init__(self, receive: Receive, limits: RequestLimits) -> None:
        self._receive = receive
        self._limits = limits
        self._deadline = time.monotonic() + limits.body_timeout_s
        self._received = 0
        self._done = False

    async def receive(self) -> Message:
        if self._done:  # after the body: the application waits for a disconnect, unbounded
            return await self._receive()
        remaining = self._deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), max(remaining, 0.001))
        except TimeoutError:
            raise Refused(
                408, f"the request body did not arrive within {self._limits.body_timeout_s:g} s", "body_timeout"
            ) from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limits.max_body_bytes:
                raise _too_large(self._limits)
            self._done = not message.get("more_body", False)
        return message


def _check_headers(scope: Scope, limits: RequestLimits) -> None:
    headers = scope["headers"]
    if len(headers) > limits.max_headers:
        raise Refused(
            431,
            f"the request has {len(headers)} headers; at most {limits.max_headers} are allowed",
            "headers_too_large",
        )
    size = sum(len(name) + len(value) for name, value in headers)
    if size > limits.max_header_bytes:
        raise Refused(
            431,
            f"the request's headers total {size} bytes; at most {limits.max_header_bytes} are allowed",
            "headers_too_large",
        )
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise Refused(400, "the Content-Length header is not a number", "invalid_content_length") from None
            if length > limits.max_body_bytes:
                raise _too_large(limits)


def _too_large(limits: RequestLimits) -> Refused:
    size = f"{limits.max_body_bytes / MIB:g} MiB" if limits.max_body_bytes >= MIB else f"{limits.max_body_bytes} bytes"
    return Refused(413, f"the request body is larger than {size}", "body_too_large")


async def _refuse(exc: Refused, send: Send) -> None:
    response = error_response(exc.status, exc.message, code=exc.code, headers={"connection": "close"})
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
