"""What one request may cost the ingress before it is refused: sizes, counts, depths, times.

Ray Serve's direct ingress runs uvicorn (httptools) with only its keep-alive and end-to-end
timeouts configurable, so the rest is enforced here, in the application's ASGI middleware
(middleware.py) and its body parser (protocol.py). docs/limits.md lists each with its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from glmserve.common.errors import InvalidRequestError

MIB = 1 << 20
DEFAULT_MAX_BODY_MIB = 16
# Arrays and objects inside each other; OpenAI's own bodies nest < 10 deep (tool schemas most).
MAX_JSON_DEPTH = 64


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_MIB * MIB
    # Header names and values together, and how many; a browser sends ~1 KiB, an SDK less.
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    # From the request's headers to its body's last byte: a client that trickles its body holds
    # a connection and a Ray Serve slot, so it has this long to finish.
    body_timeout_s: float = 30.0
    max_json_depth: int = MAX_JSON_DEPTH
    # Failed API keys one client address may send per window before it gets 429s for the window.
    max_failed_keys: int = 10
    failed_keys_window_s: float = 60.0


def check_depth(value: Any, limit: int) -> None:
    """Raises InvalidRequestError when `value` (parsed JSON) nests deeper than `limit`; iterative,
    so a hostile body cannot exhaust the stack here or later (pydantic, Jinja, the tokenizer)."""
    level: list[Iterable[Any]] = [[value]]
    depth = 0
    while level:
        children: list[Iterable[Any]] = []
        for items in level:
            for item in items:
                if isinstance(item, dict):
                    children.append(item.values())
                elif isinstance(item, list):
                    children.append(item)
        if children:
            depth += 1
            if depth > limit:
                raise InvalidRequestError(
                    f"request body nests arrays and objects more than {limit} levels deep", code="body_too_deep"
                )
        level = children
