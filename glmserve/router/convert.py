"""Protobuf messages <-> the router's domain records, validating what comes off the wire."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from glmserve.common.errors import InvalidRequestError
from glmserve.common.tenancy import PriorityClass
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.types import (
    Admitted,
    Decision,
    Load,
    Outcome,
    Role,
    RouteQuery,
    Stage,
    Target,
    Usage,
    WorkerInfo,
)

# The protocol this code speaks (router.proto's header): 2 admits in Route and settles in Complete;
# 3 adds Session.
PROTOCOL_VERSION = 3
ADMITTING_VERSION = 2
FLOW_CONTROL_VERSION = 2
MAX_ID_CHARS = 256
# The router connects to engines' sockets: a concrete host and port, never a bind wildcard.
_ENDPOINT = re.compile(r"^(tcp://[^*\s]+:\d{1,5}|ipc://\S+)$")
_ROLE_VALUES: dict[Role, pb.Role] = {"prefill": pb.ROLE_PREFILL, "decode": pb.ROLE_DECODE}
_ROLES: dict[int, Role] = {value: name for name, value in _ROLE_VALUES.items()}
_PRIORITY_VALUES: dict[PriorityClass, pb.Priority] = {
    "batch": pb.PRIORITY_BATCH,
    "standard": pb.PRIORITY_STANDARD,
    "premium": pb.PRIORITY_PREMIUM,
    "critical": pb.PRIORITY_CRITICAL,
}
_PRIORITIES: dict[int, PriorityClass] = {value: name for name, value in _PRIORITY_VALUES.items()}
_PRIORITIES[pb.PRIORITY_UNSPECIFIED] = "standard"
_STAGE_VALUES: dict[Stage, pb.Stage] = {"finished": pb.STAGE_UNSPECIFIED, "prefill_done": pb.STAGE_PREFILL_DONE}
_STAGES: dict[int, Stage] = {value: name for name, value in _STAGE_VALUES.items()}
_OUTCOME_VALUES: dict[Outcome, pb.Outcome] = {
    "ok": pb.OUTCOME_OK,
    "cancelled": pb.OUTCOME_CANCELLED,
    "failed": pb.OUTCOME_FAILED,
}
_OUTCOMES: dict[int, Outcome] = {value: name for name, value in _OUTCOME_VALUES.items()}


def _identifier(value: str, param: str) -> str:
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidRequestError(f"{param} must be 1 to {MAX_ID_CHARS} characters", param=param)
    return value


def worker_from_pb(msg: pb.Worker) -> WorkerInfo:
    role = _ROLES.get(msg.role)
    if role is None:
        raise InvalidRequestError("worker.role must be ROLE_PREFILL or ROLE_DECODE", param="worker.role")
    if msg.block_size == 0:
        raise InvalidRequestError("worker.block_size must be positive (vLLM's block size)", param="worker.block_size")
    if msg.kv_replay_endpoint and not msg.kv_events_endpoint:
        raise InvalidRequestError("kv_replay_endpoint needs kv_events_endpoint", param="worker.kv_replay_endpoint")
    for param in ("kv_events_endpoint", "kv_replay_endpoint"):
        endpoint = getattr(msg, param)
        if endpoint and not _ENDPOINT.match(endpoint):
            raise InvalidRequestError(
                f"{param} {endpoint!r} is not a ZMQ endpoint the router can connect to (tcp://HOST:PORT, ipc://PATH)",
                param=f"worker.{param}",
            )
    return WorkerInfo(
        worker_id=_identifier(msg.worker_id, "worker.worker_id"),
        role=role,
        model=_identifier(msg.model, "worker.model"),
        address=msg.address,
        kv_events_endpoint=msg.kv_events_endpoint,
        kv_replay_endpoint=msg.kv_replay_endpoint,
        kv_events_topic=msg.kv_events_topic,
        block_size=msg.block_size,
        max_running_requests=msg.max_running_requests,
        kv_cache_blocks=msg.kv_cache_blocks,
    )


def worker_to_pb(info: WorkerInfo) -> pb.Worker:
    return pb.Worker(
        worker_id=info.worker_id,
        role=_ROLE_VALUES[info.role],
        model=info.model,
        address=info.address,
        kv_events_endpoint=info.kv_events_endpoint,
        kv_replay_endpoint=info.kv_replay_endpoint,
        kv_events_topic=info.kv_events_topic,
        block_size=info.block_size,
        max_running_requests=info.max_running_requests,
        kv_cache_blocks=info.kv_cache_blocks,
    )


def load_from_pb(msg: pb.Load) -> Load:
    if not (math.isfinite(msg.kv_cache_usage) and 0 <= msg.kv_cache_usage <= 1):
        raise InvalidRequestError("load.kv_cache_usage must be within [0, 1]", param="load.kv_cache_usage")
    return Load(msg.running, msg.waiting, msg.kv_cache_usage)


def load_to_pb(load: Load) -> pb.Load:
    return pb.Load(running=load.running, waiting=load.waiting, kv_cache_usage=load.kv_cache_usage)


def query_from_pb(msg: pb.RouteRequest, max_prompt_tokens: int) -> RouteQuery:
    priority = _PRIORITIES.get(msg.priority)
    if priority is None:
        raise InvalidRequestError(f"unknown priority {msg.priority}", param="priority")
    n = len(msg.prompt_token_ids)
    if not 0 < n <= max_prompt_tokens:
        raise InvalidRequestError(
            f"prompt_token_ids must hold 1 to {max_prompt_tokens} tokens", param="prompt_token_ids"
        )
    return RouteQuery(
        request_id=_identifier(msg.request_id, "request_id"),
        tenant=msg.tenant,
        model=_identifier(msg.model, "model"),
        tokens=np.array(msg.prompt_token_ids, dtype=np.uint32),
        cache_salt=msg.cache_salt,
        max_tokens=msg.max_tokens,
        priority=priority,
        allowed_worker_ids=frozenset(msg.allowed_worker_ids),
    )


def query_to_pb(
    request_id: str,
    model: str,
    prompt_token_ids: Sequence[int],
    *,
    tenant: str,
    cache_salt: str,
    max_tokens: int | None,
    priority: PriorityClass,
    allowed_worker_ids: Sequence[str],
) -> pb.RouteRequest:
    return pb.RouteRequest(
        request_id=request_id,
        tenant=tenant,
        model=model,
        prompt_token_ids=prompt_token_ids,
        cache_salt=cache_salt,
        max_tokens=max_tokens or 0,
        priority=_PRIORITY_VALUES[priority],
        allowed_worker_ids=allowed_worker_ids,
        protocol_version=PROTOCOL_VERSION,
    )


def _target_to_pb(target: Target) -> pb.Target:
    return pb.Target(
        worker_id=target.worker_id, address=target.address, cached_tokens=target.cached_tokens, score=target.score
    )


def _target_from_pb(msg: pb.Target) -> Target:
    return Target(msg.worker_id, msg.address, msg.cached_tokens, msg.score)


def decision_to_pb(decision: Decision) -> pb.RouteResponse:
    msg = pb.RouteResponse(
        request_id=decision.request_id,
        decode=_target_to_pb(decision.decode),
        expected_cached_tokens=decision.expected_cached_tokens,
        prompt_tokens=decision.prompt_tokens,
        policy=decision.policy,
        reasons=decision.reasons,
        degraded=decision.degraded,
        protocol_version=PROTOCOL_VERSION,
    )
    if decision.prefill is not None:
        msg.prefill.CopyFrom(_target_to_pb(decision.prefill))
    if decision.admission is not None:
        msg.admission.SetInParent()  # present even with no headers (a plan without rate limits)
        msg.admission.headers.update(decision.admission.headers)
        if decision.admission.engine_max_tokens is not None:
            msg.admission.engine_max_tokens = decision.admission.engine_max_tokens
    return msg


def _admitted_from_pb(msg: pb.Admission) -> Admitted:
    engine_max = msg.engine_max_tokens if msg.HasField("engine_max_tokens") else None
    return Admitted(dict(msg.headers), engine_max)


def decision_from_pb(msg: pb.RouteResponse) -> Decision:
    return Decision(
        request_id=msg.request_id,
        prefill=_target_from_pb(msg.prefill) if msg.HasField("prefill") else None,
        decode=_target_from_pb(msg.decode),
        expected_cached_tokens=msg.expected_cached_tokens,
        prompt_tokens=msg.prompt_tokens,
        policy=msg.policy,
        reasons=tuple(msg.reasons),
        degraded=msg.degraded,
        admission=_admitted_from_pb(msg.admission) if msg.HasField("admission") else None,
        slotted=msg.protocol_version >= FLOW_CONTROL_VERSION,
    )


def completion_from_pb(msg: pb.CompleteRequest) -> tuple[str, Stage, Usage, Outcome]:
    stage = _STAGES.get(msg.stage)
    if stage is None:
        raise InvalidRequestError(f"unknown stage {msg.stage}", param="stage")
    if msg.outcome == pb.OUTCOME_UNSPECIFIED:  # a v1 client
        outcome: Outcome = "failed" if msg.failed else "ok"
    elif (known := _OUTCOMES.get(msg.outcome)) is not None:
        outcome = known
    else:
        raise InvalidRequestError(f"unknown outcome {msg.outcome}", param="outcome")
    usage = Usage(msg.prompt_tokens, msg.cached_tokens, msg.completion_tokens, outcome == "failed")
    return _identifier(msg.request_id, "request_id"), stage, usage, outcome


def completion_to_pb(request_id: str, stage: Stage, usage: Usage, outcome: Outcome = "ok") -> pb.CompleteRequest:
    if usage.failed:
        outcome = "failed"
    return pb.CompleteRequest(
        request_id=request_id,
        stage=_STAGE_VALUES[stage],
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        failed=outcome == "failed",  # what a v1 router reads
        outcome=_OUTCOME_VALUES[outcome],
    )
