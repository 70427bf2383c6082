"""The ingress's error responses, read by the openai client: each glmserve error, the
framework's own failures and an error mid-stream reach it as the SDK's exception with OpenAI's
`error.type`, derived from glmserve.common.errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from glmserve.common import errors
from glmserve.common.errors import GlmserveError
from glmserve.serving.ingress.errors import error_event, install_handlers
from tests.common.test_errors import ERRORS, OPENAI

pytestmark = pytest.mark.asyncio
RAISED = {error.__name__: error for error, _ in ERRORS}


class Body(BaseModel):
    n: int


def ingress_app() -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.post("/v1/raise/{name}")
    async def _raise(name: str) -> None:
        raise RAISED[name]("no", param="p", code="c", retry_after_s=2)

    @app.post("/v1/validate")
    async def _validate(body: Body) -> int:
        return body.n

    @app.post("/v1/chat/completions")
    async def _stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b'data: {"id": "1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": []}\n\n'
            yield error_event(errors.BackendError("the engine died"))

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest_asyncio.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    transport = httpx2.ASGITransport(app=ingress_app())
    async with httpx2.AsyncClient(transport=transport, base_url="http://ingress/v1") as http:
        yield openai.AsyncOpenAI(api_key="k", base_url="http://ingress/v1", http_client=http, max_retries=0)


async def status_error(client: openai.AsyncOpenAI, path: str, body: object = None) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as raised:
        await client.post(path, cast_to=object, body=body)
    return raised.value


@pytest.mark.parametrize(("error", "sdk_class"), ERRORS, ids=lambda e: getattr(e, "__name__", ""))
async def test_each_error_is_the_sdks_exception_with_openais_type(
    client: openai.AsyncOpenAI, error: type[GlmserveError], sdk_class: type
) -> None:
    exc = await status_error(client, f"/raise/{error.__name__}")
    assert type(exc) is sdk_class and exc.status_code == error.kind.http_status
    assert (exc.type, exc.param, exc.code, exc.body["message"]) == (OPENAI[exc.status_code][1], "p", "c", "no")
    assert exc.response.headers["retry-after"] == "2"


async def test_the_frameworks_own_failures_are_openai_errors(client: openai.AsyncOpenAI) -> None:
    missing = await status_error(client, "/nowhere")
    assert (type(missing), missing.type) == (openai.NotFoundError, "invalid_request_error")
    invalid = await status_error(client, "/validate", {"n": "many"})
    assert (type(invalid), invalid.type, invalid.param) == (openai.BadRequestError, "invalid_request_error", "n")
    with pytest.raises(openai.APIStatusError) as raised:
        await client.get("/validate", cast_to=object)
    assert (raised.value.status_code, raised.value.type) == (405, "invalid_request_error")


async def test_an_error_after_the_first_chunk_ends_the_stream_as_an_api_error(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError) as raised:
        async for _ in stream:
            pass
    assert (raised.value.type, raised.value.message) == ("server_error", "the engine died")
