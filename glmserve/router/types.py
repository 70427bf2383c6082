"""The router's domain records, shared by the server, the client and the plugins."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from glmserve.common.roles import WorkerRole
from glmserve.common.tenancy import PriorityClass

# A worker is one of the router's pools; a colocated engine registers as "decode".
Role = WorkerRole
Stage = Literal["finished", "prefill_done"]
Outcome = Literal["ok", "cancelled", "failed"]  # how a finished request ended


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What an engine registers: identity, pool, where its KV events come from, capacity."""

    worker_id: str
    role: Role
    model: str
    address: str = ""
    kv_events_endpoint: str = ""
    kv_replay_endpoint: str = ""
    kv_events_topic: str = ""
    block_size: int = 16
    max_running_requests: int = 0  # 0: the router's configured default
    kv_cache_blocks: int = 0


@dataclass(frozen=True, slots=True)
class Load:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


@dataclass(frozen=True, slots=True)
class RouteQuery:
    request_id: str
    tenant: str
    model: str
    tokens: np.ndarray  # uint32[n] prompt token ids
    cache_salt: str = ""
    max_tokens: int = 0
    priority: PriorityClass = "standard"
    allowed_worker_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Target:
    worker_id: str
    address: str
    cached_tokens: int
    score: float


@dataclass(frozen=True, slots=True)
class Admitted:
    """The router admitted the request against its tenant's plan; Complete settles it."""

    headers: Mapping[str, str]  # x-ratelimit-* headers to return to the client
    engine_max_tokens: int | None  # max_tokens to send the engine (None: the client's own)


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    prefill: Target | None  # None: the decode worker prefills locally
    decode: Target
    expected_cached_tokens: int
    prompt_tokens: int
    policy: str
    reasons: tuple[str, ...] = ()
    degraded: bool = False
    admission: Admitted | None = None  # None: this router does not admit; the ingress admits locally
    # The router's flow control held the request until an engine slot was its to give (v2 routers):
    # the ingress does not wait for a slot of its own as well.
    slotted: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    """What the ingress reports when a request (or its prefill leg) ends."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    failed: bool = False
