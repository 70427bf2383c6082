"""parse_body against hostile and random bodies: every one is a validated request or an
InvalidRequestError naming what is wrong, never another exception (a 500 at the ingress)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmserve.common.errors import InvalidRequestError
from glmserve.serving.ingress.limits import MAX_JSON_DEPTH, check_depth
from glmserve.serving.ingress.openapi import request_body
from glmserve.serving.ingress.protocol import MAX_LOGPROBS, ChatRequest, TextCompletionRequest, parse_body

USER = [{"role": "user", "content": "hi"}]


def _chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER, **fields}).encode()


def _refused(raw: bytes, model: type[ChatRequest] | type[TextCompletionRequest] = ChatRequest) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as refused:
        parse_body(raw, model)
    return refused.value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 100_000])
def test_deeply_nested_json_is_refused_whatever_the_depth(depth: int) -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":' + b"[" * depth + b"]" * depth + b"}]}"
    assert _refused(raw).code == "body_too_deep"


def test_nesting_within_the_limit_is_parsed() -> None:
    check_depth(json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH), MAX_JSON_DEPTH)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 100_000, "logprobs": True}, "top_logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"stop": ["a"] * 100}, "stop"),
        ({"stop_token_ids": list(range(5000))}, "stop_token_ids"),
        ({"logit_bias": {str(i): 1.0 for i in range(5000)}}, "logit_bias"),
        ({"n": 1_000_000}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_absurd_chat_parameters_name_their_field(fields: dict[str, Any], param: str) -> None:
    assert _refused(_chat(**fields)).param == param


def test_completion_logprobs_are_bounded() -> None:
    raw = json.dumps({"model": "m", "prompt": "x", "logprobs": MAX_LOGPROBS + 1}).encode()
    assert _refused(raw, TextCompletionRequest).param == "logprobs"
    parse_body(json.dumps({"model": "m", "prompt": "x", "logprobs": MAX_LOGPROBS}).encode(), TextCompletionRequest)


def test_prompt_embeddings_are_refused() -> None:
    raw = json.dumps({"model": "m", "prompt": "x", "prompt_embeds": "AAAA"}).encode()
    assert _refused(raw, TextCompletionRequest).param == "prompt_embeds"


@pytest.mark.parametrize(
    "raw",
    [b'{"model":"m","messages":[{"role":"user","content":"\xff"}]}', b"\xfe\xff", b"\x00" * 10, b"", b"[]", b"1e99999"],
)
def test_invalid_utf8_and_non_objects_are_refused(raw: bytes) -> None:
    _refused(raw)


def test_a_huge_integer_is_refused() -> None:
    _refused(b'{"model":"m","messages":[],"max_tokens":1' + b"0" * 5000 + b"}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = sorted(ChatRequest.model_fields)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_random_bytes_never_escape_as_another_exception(raw: bytes) -> None:
    for model in (ChatRequest, TextCompletionRequest):
        with contextlib.suppress(InvalidRequestError):
            parse_body(raw, model)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8))
def test_random_fields_of_the_real_models_never_escape_as_another_exception(body: dict[str, Any]) -> None:
    raw = json.dumps({"model": "m", "messages": USER, "prompt": "x", **body}).encode()
    for model in (ChatRequest, TextCompletionRequest):
        with contextlib.suppress(InvalidRequestError):
            parse_body(raw, model)


def test_the_openapi_bodies_are_the_request_models() -> None:
    schema = request_body(ChatRequest)["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in schema["properties"] and schema["required"] == ["messages"]
    assert "$defs" not in schema
