"""How a request is answered: an error, a completed body, or a stream of server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from glmserve.serving.ingress.responses import Usage


@dataclass(frozen=True, slots=True)
class Failed:
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None

    @classmethod
    def engine(cls, error: Any, retry_after_s: float) -> Failed:
        """An error the engine answered with (vLLM's ErrorInfo): its status, and Retry-After on 429/503."""
        status = int(error.code) if str(error.code).isdigit() else 500
        return cls(status, error.message, error.param, None, retry_after_s if status in (429, 503) else None)


@dataclass(frozen=True, slots=True)
class Completed:
    body: dict[str, Any]
    usage: Usage


@dataclass(frozen=True, slots=True)
class Streaming:
    """`chunks` relays the engine's events and ends the request when it ends; `stop` ends a stream
    whose client left (before or while it ran): the engine's work stops and the request ends with
    what was delivered. Either runs the end once; the other then does nothing."""

    chunks: AsyncIterator[bytes]
    stop: Callable[[], None]


Reply = Failed | Completed | Streaming
