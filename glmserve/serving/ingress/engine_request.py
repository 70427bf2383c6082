"""What the engines are asked to run: built once per request from the client's validated body, its
tenant and the admission's grant, and never changed after. The client's body is only read: each
engine call gets a body of its own, with the platform's fields filled in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from ray.llm._internal.serve.engines.vllm.kv_transfer.base import DefaultPDProtocolMixin
from vllm.entrypoints.generate.base.protocol import StreamOptions
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from glmserve.common.tenancy import PRIORITY_RANK, PriorityClass
from glmserve.serving.ingress.protocol import ChatRequest, TextCompletionRequest

Endpoint = Literal["chat", "completions"]

_PD = DefaultPDProtocolMixin()


class EngineChatRequest(ChatCompletionRequest):
    """vLLM's chat request plus the engine replica the router chose (glmserve.serving.routing.pinned)."""

    glmserve_target: str | None = None
    glmserve_avoid: tuple[str, ...] = ()


class EngineCompletionRequest(CompletionRequest):
    """vLLM's completion request plus the engine replica the router chose."""

    glmserve_target: str | None = None
    glmserve_avoid: tuple[str, ...] = ()


EngineBody = EngineChatRequest | EngineCompletionRequest


@dataclass(frozen=True, slots=True)
class EngineRequest:
    request_id: str
    endpoint: Endpoint
    client: ChatRequest | TextCompletionRequest  # validated; read, never written
    model: str  # the served model's name (the client may have left it out)
    prompt: tuple[int, ...]  # rendered once at the ingress; the engines reuse it
    tenant: str
    priority: PriorityClass
    cache_salt: str
    max_tokens: int | None  # the client's, else its plan's cap (None: the engine's default)
    # A migrated request (migration.py): the output tokens earlier engines delivered, which continue
    # the prompt, and the replicas that failed it (routing.pinned avoids them).
    generated: tuple[int, ...] = ()
    avoid: tuple[str, ...] = ()
    token_ids: bool = False  # the engines return the token ids they generate

    def continued(self, generated: tuple[int, ...], avoid: tuple[str, ...]) -> EngineRequest:
        return replace(self, generated=generated, avoid=avoid)

    @property
    def stream(self) -> bool:
        return bool(self.client.stream)

    @property
    def client_wants_usage(self) -> bool:
        options = self.client.stream_options
        return bool(self.client.stream and options and options.include_usage)

    @property
    def client_wants_running_usage(self) -> bool:
        options = self.client.stream_options
        return self.client_wants_usage and bool(options and options.continuous_usage_stats)

    def engine_body(self, *, target: str | None, kv_transfer_params: Mapping[str, Any] | None = None) -> EngineBody:
        """The decode (or colocated) engine's body. `target`: the replica the router chose (None:
        Serve balances); `kv_transfer_params`: where the prompt's KV was prefilled, if it was."""
        prompt = [*self.prompt, *self.generated]
        return self._body(target, {**(kv_transfer_params or {}), "prompt_token_ids": prompt})

    def prefill_body(self, *, target: str | None) -> EngineBody:
        """The remote prefill's body: Ray Serve LLM's default P/D shaping (one token, not streamed,
        KV kept for a remote decode), on this request's prompt tokens."""
        # Ray's annotations name its own request models; ours are vLLM's, as the engines take them.
        shaped = cast(EngineBody, _PD.prepare_prefill_request(request=cast(Any, self._body(None, None)), peer=None))
        params = {**(shaped.kv_transfer_params or {}), "prompt_token_ids": list(self.prompt)}
        return shaped.model_copy(update={"glmserve_target": target, "kv_transfer_params": params})

    def _body(self, target: str | None, kv_transfer_params: dict[str, Any] | None) -> EngineBody:
        cls: type[EngineBody] = EngineChatRequest if self.endpoint == "chat" else EngineCompletionRequest
        # Read from __dict__: vLLM warns on every read of its deprecated fields, which are copied all the same.
        fields = {name: value for name, value in vars(self.client).items() if name in cls.model_fields}
        platform: dict[str, Any] = {
            "model": self.model,
            "cache_salt": self.cache_salt,
            "priority": PRIORITY_RANK[self.priority],
            # The platform needs token counts for every request, also one cut short (the running
            # usage on each chunk); the client sees usage only if it asked.
            "stream_options": StreamOptions(include_usage=True, continuous_usage_stats=True) if self.stream else None,
            "kv_transfer_params": kv_transfer_params,
            "glmserve_target": target,
            "glmserve_avoid": self.avoid,
            # The engine's id of this call (one per leg: a moved request's next leg is a new call),
            # which an abort names; never the client's, which could name another tenant's request.
            "request_id": f"{self.request_id}-{len(self.avoid)}",
        }
        if self.token_ids:
            platform["return_token_ids"] = True
        if fields.get("max_tokens") is None:
            platform["max_tokens"] = self.max_tokens
        if self.generated:
            platform |= self._continuation(fields)
        # Every field was validated on the client's model, which shares vLLM's validators.
        return cls.model_construct(_fields_set=self.client.model_fields_set | platform.keys(), **fields | platform)

    def _continuation(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """What a migrated request's next engine is told besides its longer prompt: the budget
        left (its prompt carries the rest), and no echo of that prompt."""
        done = len(self.generated)
        budget: dict[str, Any] = {"echo": False}
        limit = fields.get("max_completion_tokens") or fields.get("max_tokens") or self.max_tokens
        if limit is not None:
            budget["max_tokens"] = max(1, limit - done)
            if "max_completion_tokens" in fields:
                budget["max_completion_tokens"] = None
        if min_tokens := fields.get("min_tokens"):
            budget["min_tokens"] = max(0, min_tokens - done)
        return budget
