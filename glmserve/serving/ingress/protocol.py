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
from vllm.exceptions import VLLMValidationError

from glmserve.common.errors import InvalidRequestError
from glmserve.serving.ingress.limits import MAX_JSON_DEPTH, check_depth

# vLLM's default max_logprobs: the engines refuse more, but only once the request reached them.
MAX_LOGPROBS = 20
# Each entry is checked against every generated token; OpenAI allows 300 logit_bias entries.
MAX_TOKEN_LIST = 1024


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

    @field_validator("top_logprobs", "logprobs", "prompt_logprobs", check_fields=False)
    @classmethod
    def _logprobs(cls, value: int | bool | None) -> int | bool | None:
        # Chat's `logprobs` is a switch (bool, an int subclass); the counts are ints. -1 (vLLM:
        # the whole vocabulary) would return ~150k floats per token.
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_LOGPROBS:
            raise ValueError(f"must be between 0 and {MAX_LOGPROBS}, got {value}")
        return value

    @field_validator("stop_token_ids", "bad_words", "logit_bias", check_fields=False)
    @classmethod
    def _bounded(cls, value: list[Any] | dict[str, Any] | None) -> list[Any] | dict[str, Any] | None:
        if value is not None and len(value) > MAX_TOKEN_LIST:
            raise ValueError(f"at most {MAX_TOKEN_LIST} entries are allowed, got {len(value)}")
        return value

    @field_validator("prompt_embeds", check_fields=False)
    @classmethod
    def _no_embeds(cls, value: object) -> None:
        if value is not None:
            raise ValueError("prompt embeddings are not supported; send text or token ids")

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


# pydantic names the branch of a union it tried ("stop.list[str]"); the client's field is "stop".
_UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict"}


def _param(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, str) and (part in _UNION_BRANCHES or "[" in part):
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


R = TypeVar("R", bound=BaseModel)


def parse_body(raw: bytes, model: type[R], max_depth: int = MAX_JSON_DEPTH) -> R:
    """JSON bytes -> validated request, or an InvalidRequestError naming the offending field."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise InvalidRequestError(
            f"request body nests arrays and objects more than {max_depth} levels deep", code="body_too_deep"
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"request body must be a JSON object, got {type(data).__name__}")
    check_depth(data, max_depth)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A union's mismatched branches ("stop.str: Input should be a valid string") hide the
        # branch that says what is wrong ("stop: List should have at most 4 items").
        first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
        param = _param(first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequestError(f"{param}: {message}" if param else message, param=param) from None
    except VLLMValidationError as exc:  # vLLM's cross-field checks raise their own
        message = exc.args[0] if exc.args else str(exc)
        raise InvalidRequestError(message, param=exc.parameter) from None
    except (TypeError, AttributeError) as exc:
        # vLLM's before-validators read the raw dict and trip over values of the wrong shape
        # (`tools: [1]`, `messages: [null]`) before pydantic's own checks say so.
        raise InvalidRequestError(f"request body does not have the shape of the API: {exc}") from None


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
