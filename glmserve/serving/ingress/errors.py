"""OpenAI-shaped error responses: `{"error": {"message", "type", "param", "code"}}`, typed by
glmserve.common.errors' taxonomy."""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from glmserve.common.errors import GlmserveError, kind_of

log = logging.getLogger(__name__)


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind_of(status).openai_type, "param": param, "code": code}}
    all_headers = dict(headers or {})
    if retry_after_s is not None:
        all_headers["retry-after"] = str(max(1, round(retry_after_s)))
    return JSONResponse(body, status_code=status, headers=all_headers)


def error_body(exc: GlmserveError) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": exc.message, "type": exc.kind.openai_type, "param": exc.param, "code": exc.code}}


def error_event(exc: GlmserveError) -> bytes:
    """A failure after a stream's first bytes: the status line is gone, so it ends the stream as an
    OpenAI error event (the openai SDK raises it as APIError) instead of a dropped connection."""
    return f"data: {json.dumps(error_body(exc))}\n\ndata: [DONE]\n\n".encode()


def from_error(exc: GlmserveError) -> JSONResponse:
    return error_response(
        exc.kind.http_status, exc.message, param=exc.param, code=exc.code, retry_after_s=exc.retry_after_s
    )


def install_handlers(app: FastAPI) -> None:
    """Every failure leaves as an OpenAI error body, including the framework's own 404/405."""

    @app.exception_handler(GlmserveError)
    async def _glmserve(_: Request, exc: GlmserveError) -> JSONResponse:
        return from_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, str(exc.detail or phrase), headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = str(first.get("msg", "invalid request"))
        return error_response(400, f"{param}: {message}" if param else message, param=param)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the request was not completed")


def status_of(exc: BaseException) -> int:
    """The HTTP status a request that ended in `exc` is counted with (499: the client went away)."""
    if isinstance(exc, GlmserveError):
        return exc.kind.http_status
    return 499 if isinstance(exc, asyncio.CancelledError) else 500
