"""What clients send: vLLM's OpenAI protocol models plus GLM's `thinking` switch and edge checks.

These models hold the client's fields only. What the platform adds for the engines (the KV to
pull, the replica to run on, the tenant's salt and priority) lives in engine_request.py.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from glmserve.common.errors import InvalidRequestError


class Thinking(BaseModel):
    """Z.ai's switch: `{"type": "enabled"}` or `{"type": "disabled"}`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["enabled", "disabled"]


class _Limits:
    """Checks OpenAI makes at its edge and vLLM leaves to the engine (which reports them late or as 500s)."""

    # vLLM's models declare kv_transfer_params for its P/D proxy; for a client it would name
    # remote KV blocks (another request's cache), so here it is no field: a client's value stays
    # an ignored extra and the engines get the platform's (engine_request.py).
    kv_transfer_params: ClassVar[None] = None

    @field_validator("max_tokens", "max_completion_tokens", check_fields=False)
    @classmethod
    def _positive_tokens(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("n", check_fields=False)
    @classmethod
    def _single_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported")
        return value


ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ChatRequest(_Limits, ChatCompletionRequest):
    thinking: Thinking | None = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages: list[Any]) -> list[Any]:
        if not messages:
            raise ValueError("must contain at least one message")
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
            if role not in ROLES:
                raise ValueError(f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        return messages

    @model_validator(mode="after")
    def _apply_thinking(self) -> Self:
        # GLM's template reads `enable_thinking`; the model's default applies when neither is given.
        if self.thinking is not None:
            enabled = self.thinking.type == "enabled"
            self.chat_template_kwargs = {**(self.chat_template_kwargs or {}), "enable_thinking": enabled}
        return self


class TextCompletionRequest(_Limits, CompletionRequest):
    pass


def _param(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


R = TypeVar("R", bound=BaseModel)


def parse_body(raw: bytes, model: type[R]) -> R:
    """JSON bytes -> validated request, or an InvalidRequestError naming the offending field."""
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = _param(first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequestError(f"{param}: {message}" if param else message, param=param) from None


def client_max_tokens(body: ChatRequest | TextCompletionRequest) -> int | None:
    """The most output tokens the client asked for (chat's max_completion_tokens wins, as in OpenAI's API)."""
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        return body.max_completion_tokens
    return body.max_tokens


def check_context(max_context: int, prompt_tokens: int, max_tokens: int | None) -> None:
    """The engine checks this too, but only after the request reached it; the ingress knows first."""
    total = prompt_tokens + (max_tokens or 0)
    if prompt_tokens >= max_context or total > max_context:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_context} tokens. However, you requested "
            f"{total} tokens ({prompt_tokens} in the prompt, {max_tokens or 0} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="max_tokens" if max_tokens else "messages",
            code="context_length_exceeded",
        )
