import asyncio
import json
from collections.abc import AsyncIterator

from glmserve.serving.ingress.responses import ClosingStreamingResponse, Usage, glm_message_fields, sse_stream


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def test_reasoning_is_renamed_in_full_responses() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": None, "reasoning": "think"}}]}
    assert glm_message_fields(body)["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "think",
    }


def _run(batches: list[list[str]], wants_usage: bool) -> tuple[str, Usage, list[int]]:
    async def source() -> AsyncIterator[list[str]]:
        for b in batches:
            yield b

    async def go() -> tuple[str, Usage, list[int]]:
        usage, seen = Usage(), []
        out = [
            c async for c in sse_stream(source(), client_wants_usage=wants_usage, usage=usage, on_events=seen.append)
        ]
        return b"".join(out).decode(), usage, seen

    return asyncio.run(go())


STREAM = [
    [_event({"choices": [{"delta": {"role": "assistant", "content": ""}}]})],
    [
        _event({"choices": [{"delta": {"reasoning": 'a "reasoning": b'}}]}),
        _event({"choices": [{"delta": {"content": "x"}}]}),
    ],
    [
        _event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2,
                                          "prompt_tokens_details": {"cached_tokens": 4}}}),
        "data: [DONE]\n\n",
    ],
]  # fmt: skip


def test_stream_renames_reasoning_but_not_content_that_looks_like_it() -> None:
    text, _, _ = _run(STREAM, wants_usage=True)
    assert '"reasoning_content":"a \\"reasoning\\": b"' in text
    assert '"reasoning":' not in text


def test_usage_is_read_and_hidden_unless_asked() -> None:
    text, usage, seen = _run(STREAM, wants_usage=False)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (7, 2, 4)
    assert '"usage"' not in text and text.endswith("data: [DONE]\n\n")
    assert sum(seen) == 3  # role chunk + 2 token chunks
    shown, _, _ = _run(STREAM, wants_usage=True)
    assert '"usage"' in shown


def _asgi_call(response: ClosingStreamingResponse, *, disconnect_at_once: bool) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        if not disconnect_at_once:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"spec_version": "2.0"}, "method": "GET", "path": "/", "headers": []}
    asyncio.run(response(scope, receive, send))
    return sent


def test_closing_response_runs_its_cleanup_when_the_body_never_starts() -> None:
    closed = []

    async def body() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.5)  # the client is gone before the first chunk exists
        yield b"data: x\n\n"

    _asgi_call(ClosingStreamingResponse(body(), on_close=lambda: closed.append(True)), disconnect_at_once=True)
    assert closed == [True]


def test_closing_response_runs_its_cleanup_after_a_complete_body() -> None:
    closed = []

    async def body() -> AsyncIterator[bytes]:
        yield b"data: x\n\n"

    sent = _asgi_call(
        ClosingStreamingResponse(body(), on_close=lambda: closed.append(len(closed))), disconnect_at_once=False
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert closed == [0]


def _running(delta: dict, prompt: int, completion: int) -> str:
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
             "completion_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    return _event({"id": "c", "choices": [{"delta": delta}], "usage": usage, "prompt_token_ids": None})


CUT_SHORT = [
    [_running({"role": "assistant", "content": ""}, 7, 0)],
    [_running({"content": "a"}, 7, 1), _running({"content": 'b "usage":{"x":1}'}, 7, 2)],
]


def test_a_stream_cut_short_is_billed_what_it_delivered() -> None:
    """No final usage event (the engine's host was lost): the running usage of the last chunk sent."""
    text, usage, _ = _run(CUT_SHORT, wants_usage=False)
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 2)
    assert '"usage":{"prompt' not in text and 'b \\"usage\\":{\\"x\\":1}' in text
    assert '"reasoning_tokens"' not in text and '"prompt_token_ids":null}' in text


def test_running_usage_is_forwarded_only_when_asked() -> None:
    async def go() -> str:
        async def source() -> AsyncIterator[list[str]]:
            for b in CUT_SHORT:
                yield b

        chunks = sse_stream(
            source(), client_wants_usage=True, client_wants_running_usage=True, usage=Usage(), on_events=print
        )
        return b"".join([c async for c in chunks]).decode()

    assert asyncio.run(go()).count('"completion_tokens":') == 3


def test_the_final_usage_event_wins_over_running_usage() -> None:
    _, usage, _ = _run([*CUT_SHORT, STREAM[-1]], wants_usage=False)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (7, 2, 4)
