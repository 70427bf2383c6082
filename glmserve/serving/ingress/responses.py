"""Engine output -> tenant bytes: GLM's field names, usage accounting, SSE framing."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

# vLLM names the reasoning field `reasoning`; Z.ai's GLM API (and DeepSeek's, which clients
# copy) call it `reasoning_content`. In vLLM's compact JSON the key can only appear as a key:
# quotes inside string values are escaped, so this replacement never touches content.
_VLLM_REASONING = '"reasoning":'
_GLM_REASONING = '"reasoning_content":'
_DONE = "data: [DONE]"
# The running usage vLLM adds to every chunk (`continuous_usage_stats`): numbers and objects of
# numbers (`completion_tokens_details`), and, as above, `,"usage":` can only be that key. It makes
# a stream cut short billable for what it sent.
_RUNNING_USAGE = re.compile(r',"usage":(\{(?:[^{}]|\{[^{}]*\})*\})')


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_dict(cls, usage: dict[str, Any] | None) -> Usage:
        if not usage:
            return cls()
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            usage.get("prompt_tokens") or 0,
            usage.get("completion_tokens") or 0,
            details.get("cached_tokens") or 0,
        )


def glm_message_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Non-streamed response: rename `reasoning` on every choice's message."""
    for choice in body.get("choices") or ():
        message = choice.get("message")
        if isinstance(message, dict) and "reasoning" in message:
            message["reasoning_content"] = message.pop("reasoning")
    return body


def _glm_names(event: str) -> str:
    return event.replace(_VLLM_REASONING, _GLM_REASONING)


def _is_usage_event(event: str) -> bool:
    return '"choices":[]' in event and '"usage":' in event


async def sse_stream(
    batches: AsyncIterator[list[str]],
    *,
    client_wants_usage: bool,
    usage: Usage,
    on_events: Any,
    client_wants_running_usage: bool = False,
) -> AsyncIterator[bytes]:
    """Re-frames the engine's SSE events; fills `usage` from the engine's running usage as the
    events leave (so a stream that fails mid-way is billed the tokens it delivered), then from
    its final usage event.

    The engine is always asked for both (the platform needs token counts for every request); they
    are forwarded only when the client asked for them, as OpenAI does.
    """
    async for batch in batches:
        out: list[str] = []
        tokens = 0
        running = None
        for event in batch:
            if _is_usage_event(event):
                parsed = Usage.from_dict(json.loads(event.removeprefix("data: "))["usage"])
                usage.prompt_tokens, usage.completion_tokens = parsed.prompt_tokens, parsed.completion_tokens
                usage.cached_tokens = parsed.cached_tokens
                running = None
                if not client_wants_usage:
                    continue
            elif not event.startswith(_DONE):
                tokens += 1
                if found := _RUNNING_USAGE.search(event):
                    running = found.group(1)
                    if not client_wants_running_usage:
                        out.append(_glm_names(event[: found.start()] + event[found.end() :]))
                        continue
            out.append(_glm_names(event))
        if running is not None:
            parsed = Usage.from_dict(json.loads(running))
            usage.prompt_tokens, usage.completion_tokens = parsed.prompt_tokens, parsed.completion_tokens
        if tokens:
            on_events(tokens)
        if out:
            yield "".join(out).encode()


class ClosingStreamingResponse(StreamingResponse):
    """Calls `on_close` however the response ends, even when its body never started: a client
    gone before the first byte leaves the body's generator unstarted, so its own cleanup (the
    engine slot, the plan lease, the engine stream) would never run."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
