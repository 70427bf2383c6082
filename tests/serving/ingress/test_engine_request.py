"""The engines' bodies: built from the client's validated body without changing it, with the
platform's fields (and none a client could slip in)."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import pytest

from glmserve.serving.ingress.engine_request import EngineChatRequest, EngineCompletionRequest, EngineRequest
from glmserve.serving.ingress.protocol import ChatRequest, TextCompletionRequest, parse_body
from glmserve.serving.routing.pinned import pinned_target

PROMPT = (11, 12, 13)


def _request(client: ChatRequest | TextCompletionRequest, *, max_tokens: int | None = None) -> EngineRequest:
    endpoint = "chat" if isinstance(client, ChatRequest) else "completions"
    return EngineRequest("r1", endpoint, client, "served", PROMPT, "acme", "premium", "salt-1", max_tokens)


def test_internal_fields_are_not_client_fields() -> None:
    for model in (ChatRequest, TextCompletionRequest):
        assert not {"kv_transfer_params", "glmserve_target"} & model.model_fields.keys()
    body = parse_body(
        b'{"model": "m", "prompt": "x", "kv_transfer_params": {"remote_block_ids": [1]}, "glmserve_target": "w9"}',
        TextCompletionRequest,
    )
    sent = _request(body).engine_body(target=None)
    assert isinstance(sent, EngineCompletionRequest)
    assert sent.kv_transfer_params == {"prompt_token_ids": list(PROMPT)}
    assert sent.glmserve_target is None and not sent.model_extra


@pytest.mark.parametrize(
    ("fields", "plan_cap", "sent_max_tokens"),
    [({}, 64, 64), ({"max_tokens": 5}, 5, 5), ({}, None, None), ({"max_completion_tokens": 7}, 7, 7)],
)
def test_the_engine_gets_the_clients_max_tokens_or_the_plans_cap(
    fields: dict[str, int], plan_cap: int | None, sent_max_tokens: int | None
) -> None:
    body = parse_body(json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode(), ChatRequest)
    sent = _request(body, max_tokens=plan_cap).engine_body(target="decode-3")
    assert isinstance(sent, EngineChatRequest)
    assert sent.max_tokens == sent_max_tokens
    assert (sent.model, sent.cache_salt, sent.priority) == ("served", "salt-1", 1)
    assert body.model is None and body.max_tokens == fields.get("max_tokens")


def test_prefill_and_decode_bodies_are_separate_and_survive_the_trip_to_the_engine() -> None:
    body = parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}', ChatRequest)
    request = _request(body)
    prefill = request.prefill_body(target="prefill-1")
    decode = request.engine_body(target="decode-2", kv_transfer_params={"remote_engine_id": "e1"})
    assert (prefill.max_tokens, prefill.stream, prefill.stream_options) == (1, False, None)
    assert prefill.kv_transfer_params["do_remote_decode"] and prefill.kv_transfer_params["prompt_token_ids"] == [
        11,
        12,
        13,
    ]
    assert decode.stream and decode.stream_options is not None and decode.stream_options.include_usage
    assert decode.kv_transfer_params == {"remote_engine_id": "e1", "prompt_token_ids": [11, 12, 13]}
    assert prefill.messages is not body.messages  # shaping the prefill leg cannot reach the client's body
    arrived = pickle.loads(pickle.dumps(decode))  # what the engine replica gets from Serve
    assert isinstance(arrived, EngineChatRequest) and arrived.glmserve_target == "decode-2"
    assert body.stream_options is None and body.kv_transfer_params is None


def test_the_pinned_router_reads_the_target_of_the_engine_body() -> None:
    class Pending:
        def __init__(self, body: object) -> None:
            self.args = [body]

    body = parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', ChatRequest)
    assert pinned_target(Pending(_request(body).engine_body(target="decode-5"))) == "decode-5"  # type: ignore[arg-type]
    assert pinned_target(Pending(_request(body).engine_body(target=None))) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [{"max_tokens": 10}, {"max_completion_tokens": 10}])
def test_a_moved_request_continues_its_prompt_with_the_budget_left(budget: dict[str, int]) -> None:
    client = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "min_tokens": 5, **budget}
    body = parse_body(json.dumps(client).encode(), ChatRequest)
    request = replace(_request(body, max_tokens=10), token_ids=True)
    sent = request.continued((21, 22, 23), ("decode-1",)).engine_body(target=None)
    assert sent.kv_transfer_params == {"prompt_token_ids": [*PROMPT, 21, 22, 23]}
    assert vars(sent)["max_tokens"] == 7 and sent.max_completion_tokens is None and sent.min_tokens == 2
    assert sent.return_token_ids and sent.glmserve_avoid == ("decode-1",) and not sent.echo
    assert request.engine_body(target=None).kv_transfer_params == {"prompt_token_ids": list(PROMPT)}  # unchanged
