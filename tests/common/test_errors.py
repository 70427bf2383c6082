"""The error taxonomy speaks OpenAI's wire types: what the openai SDK raises for each status,
and the `error.type` OpenAI's API sends with it."""

from __future__ import annotations

import httpx2
import openai
import pytest

from glmserve.common import errors
from glmserve.common.errors import GlmserveError, kind_of

# status -> (the openai SDK's exception class, OpenAI's `error.type`)
OPENAI = {
    400: (openai.BadRequestError, "invalid_request_error"),
    401: (openai.AuthenticationError, "invalid_request_error"),
    403: (openai.PermissionDeniedError, "permission_error"),
    404: (openai.NotFoundError, "invalid_request_error"),
    429: (openai.RateLimitError, "rate_limit_error"),
    500: (openai.InternalServerError, "server_error"),
    503: (openai.InternalServerError, "service_unavailable"),
    504: (openai.InternalServerError, "server_error"),
}
ERRORS = [
    (errors.InvalidRequestError, openai.BadRequestError),
    (errors.ConfigError, openai.BadRequestError),
    (errors.AuthenticationError, openai.AuthenticationError),
    (errors.PermissionDeniedError, openai.PermissionDeniedError),
    (errors.NotFoundError, openai.NotFoundError),
    (errors.RateLimitedError, openai.RateLimitError),
    (errors.OverloadedError, openai.InternalServerError),
    (errors.BackendError, openai.InternalServerError),
]


def sdk_error(status: int) -> openai.APIStatusError:
    """What the openai client raises for a response of `status`."""
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://glmserve/v1/chat/completions"))
    return openai.OpenAI(api_key="k")._make_status_error("failed", body=None, response=response)


@pytest.mark.parametrize("kind", errors.KINDS, ids=lambda k: str(k.http_status))
def test_every_kind_has_openais_type_for_its_status(kind: errors.ErrorKind) -> None:
    sdk_class, wire_type = OPENAI[kind.http_status]
    assert kind.openai_type == wire_type
    assert type(sdk_error(kind.http_status)) is sdk_class
    assert kind_of(kind.http_status) is kind


@pytest.mark.parametrize(("error", "sdk_class"), ERRORS, ids=lambda e: getattr(e, "__name__", ""))
def test_each_error_reaches_the_client_as_the_sdks_exception(error: type[GlmserveError], sdk_class: type) -> None:
    assert type(sdk_error(error.kind.http_status)) is sdk_class


def test_errors_the_framework_raises_are_typed_by_their_class_of_status() -> None:
    assert [kind_of(s).openai_type for s in (405, 413, 422)] == ["invalid_request_error"] * 3
    assert [kind_of(s) for s in (502, 599)] == [errors.INTERNAL] * 2
