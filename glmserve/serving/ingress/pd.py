"""Disaggregated serving driven by the ingress: prefill on one pool, decode on another.

The prefill replica computes the prompt's KV cache (one output token) and returns where the
KV lives (`kv_transfer_params`); the decode replica pulls it through vLLM's KV connector and
generates. The prefill body is shaped by Ray Serve LLM's default P/D protocol (the one NIXL-style
connectors use; engine_request.py). When remote prefill fails, decode prefills locally: slower,
never lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from ray.llm._internal.serve.core.protocol import RawRequestInfo
from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

log = logging.getLogger("glmserve.ingress.pd")

PrefillFallback = Literal["error", "engine_error", "no_kv_params"]


@dataclass(frozen=True, slots=True)
class Prefilled:
    """Remote prefill's outcome: the KV for decode to pull, or why decode prefills locally."""

    kv_transfer_params: dict[str, Any] | None
    fallback: PrefillFallback | None = None

    @property
    def worker(self) -> str | None:
        """NIXL's id of the prefill engine holding the KV."""
        return (self.kv_transfer_params or {}).get("remote_engine_id")


class PrefillRejected(Exception):
    """The prefill engine refused the request itself (e.g. too long): decode would refuse it too."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.message)
        self.error = error


async def remote_prefill(
    prefill: DeploymentHandle, endpoint: str, body: Any, raw_request: RawRequestInfo | None = None
) -> Prefilled:
    """KV transfer parameters for the decode request, or a fallback to prefill on the decode replica.
    `body`: the prefill body (EngineRequest.prefill_body); `raw_request`: headers for the engine
    (the trace context)."""
    stream = None
    try:
        stream = getattr(prefill, endpoint).remote(body, raw_request)
        first = await stream.__anext__()
    except Exception as exc:  # a dead or unreachable prefill replica must not fail the request
        log.warning("remote prefill failed (%s: %s); decoding with local prefill", type(exc).__name__, exc)
        return Prefilled(None, "error")
    finally:  # its one token is all it was asked for, and a client gone meanwhile wants nothing
        if stream is not None:
            stream.cancel()
    item = first[0] if isinstance(first, list) else first
    if isinstance(item, ErrorResponse):
        if 400 <= int(item.error.code) < 500 and int(item.error.code) != 429:
            raise PrefillRejected(item.error)
        log.warning("prefill engine answered %s (%s); decoding with local prefill", item.error.code, item.error.message)
        return Prefilled(None, "engine_error")
    params = getattr(item, "kv_transfer_params", None)
    if not params:
        log.warning("prefill response carried no kv_transfer_params; decoding with local prefill")
        return Prefilled(None, "no_kv_params")
    return Prefilled(dict(params))
