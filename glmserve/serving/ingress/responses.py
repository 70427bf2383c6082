"""Engine output -> tenant bytes: GLM's field names, usage accounting, SSE framing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

# vLLM names the reasoning field `reasoning`; Z.ai's GLM API (and DeepSeek's, which clients
# copy) call it `reasoning_content`. In vLLM's compact JSON the key can only appear as a key:
# quotes inside string values are escaped, so this replacement never touches content.
_VLLM_REASONING = '"reasoning":'
_GLM_REASONING = '"reasoning_content":'
_DONE = "data: [DONE]"


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


def _is_usage_event(event: str) -> bool:
    return '"choices":[]' in event and '"usage":' in event


async def sse_stream(
    batches: AsyncIterator[list[str]],
    *,
    client_wants_usage: bool,
    usage: Usage,
    on_events: Any,
) -> AsyncIterator[bytes]:
    """Re-frames the engine's SSE events; fills `usage` from the engine's final usage event.

    The engine is always asked for usage (the platform needs token counts for every request);
    the event is forwarded only when the client asked for it, as OpenAI does.
    """
    async for batch in batches:
        out: list[str] = []
        tokens = 0
        for event in batch:
            if _is_usage_event(event):
                parsed = Usage.from_dict(json.loads(event.removeprefix("data: "))["usage"])
                usage.prompt_tokens, usage.completion_tokens = parsed.prompt_tokens, parsed.completion_tokens
                usage.cached_tokens = parsed.cached_tokens
                if not client_wants_usage:
                    continue
            elif not event.startswith(_DONE):
                tokens += 1
            out.append(event.replace(_VLLM_REASONING, _GLM_REASONING))
        if tokens:
            on_events(tokens)
        if out:
            yield "".join(out).encode()
