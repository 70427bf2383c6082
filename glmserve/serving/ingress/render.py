"""Tokenize once, at the ingress, with the engines' own rendering code.

The ingress needs a request's prompt tokens before any engine sees it: to count them for
rate limits and context checks, and to hash them for KV-cache-aware routing. It builds
vLLM's GPU-less renderer (the one vLLM's own render server uses) from the same engine
arguments, so the tokens are exactly those an engine would produce, and hands them to the
engine through `kv_transfer_params["prompt_token_ids"]`, which vLLM reuses instead of
templating and tokenizing again.
"""

from __future__ import annotations

from typing import Any

from vllm.config import StructuredOutputsConfig, VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.exceptions import VLLMClientError
from vllm.renderers import renderer_from_config
from vllm.renderers.online_renderer import OnlineRenderer

from glmserve.common.errors import InvalidRequestError

# What shapes a prompt: the checkpoint, its context, and the grammar and reasoning settings that
# tool-call and reasoning rendering consult. Parallelism, KV transfer and memory do not.
_RENDER_FIELDS = ("max_model_len", "reasoning_parser", "trust_remote_code", "tokenizer", "tokenizer_mode")


class PromptRenderer:
    def __init__(self, model_path: str, engine_kwargs: dict[str, Any]) -> None:
        structured = StructuredOutputsConfig(**engine_kwargs.get("structured_outputs_config", {}))
        args = AsyncEngineArgs(
            model=model_path,
            structured_outputs_config=structured,
            **{k: engine_kwargs[k] for k in _RENDER_FIELDS if k in engine_kwargs},
        )
        model_config = args.create_model_config()
        # Rendering needs no quantized kernels; skip their capability checks (as vLLM's render server does).
        model_config.quantization = None
        vllm_config = VllmConfig(
            model_config=model_config, structured_outputs_config=args.create_structured_outputs_config()
        )
        self._renderer = renderer_from_config(vllm_config)
        self._online = OnlineRenderer(
            model_config=model_config,
            renderer=self._renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_auto_tools=bool(engine_kwargs.get("enable_auto_tool_choice")),
            tool_parser=engine_kwargs.get("tool_call_parser"),
            reasoning_parser=engine_kwargs.get("reasoning_parser"),
            tool_strict_level=engine_kwargs.get("tool_strict_level", "auto"),
            default_chat_template_kwargs=engine_kwargs.get("default_chat_template_kwargs"),
        )

    async def chat_tokens(self, request: Any) -> list[int]:
        # Rendering adjusts the request (tool grammars); the engine must get it untouched.
        try:
            return self._tokens(await self._online.render_chat(request.model_copy(deep=True)))
        except (ValueError, TypeError, VLLMClientError) as exc:  # e.g. VLLMValidationError
            raise _invalid(exc) from None

    async def completion_tokens(self, request: Any) -> list[int]:
        try:
            return self._tokens(await self._online.render_completion(request.model_copy(deep=True)))
        except (ValueError, TypeError, VLLMClientError) as exc:
            raise _invalid(exc) from None

    def token_ids(self, special: str) -> frozenset[int]:
        """The ids of one special token of the model's tokenizer (empty when it has none)."""
        token_id = self._renderer.get_tokenizer().get_vocab().get(special)
        return frozenset() if token_id is None else frozenset({token_id})

    @staticmethod
    def _tokens(result: Any) -> list[int]:
        if isinstance(result, ErrorResponse):
            raise InvalidRequestError(result.error.message, param=result.error.param)
        inputs = result[1] if isinstance(result, tuple) else result
        if len(inputs) != 1:
            raise InvalidRequestError("exactly one prompt per request is supported", param="prompt")
        return list(inputs[0]["prompt_token_ids"])


def _invalid(exc: Exception) -> InvalidRequestError:
    return InvalidRequestError(str(exc), param=getattr(exc, "parameter", None))
