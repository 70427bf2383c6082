"""The ingress's request path without Ray or engines: the real service (rendering with the tiny
model's tokenizer, admission, router client, telemetry) in front of scripted engine pools, which
stand in for Serve's DeploymentHandle; responses are driven through ASGI like the HTTP server does."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.responses import Response
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

from glmserve.common.catalogue import TINY_MODEL
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.replicas import RouterReplicas
from glmserve.router.types import Outcome, Stage, Usage
from glmserve.serving.ingress.protocol import ChatRequest, parse_body
from glmserve.serving.ingress.service import IngressService
from glmserve.serving.ingress.settings import IngressSettings, LimitsSettings, MigrationSettings, ServedModel
from glmserve.serving.models import resolve_model
from tests.router.harness import ServerThread, SimEngine, config, register
from tests.serving.tenants import write_tenants

MODEL = TINY_MODEL
MAX_CONTEXT = 2048


class EngineStream:
    """What a handle call returns (DeploymentResponseGenerator): the engine's items in order; it
    raises `error` after them, or waits forever when `hang`. Aborted (the engine's `abort`), it
    ends instead with `aborted(items sent)`'s items (none: it just ends)."""

    def __init__(
        self,
        items: list[Any],
        *,
        error: Exception | None = None,
        hang: bool = False,
        aborted: Callable[[int], list[Any]] | None = None,
    ) -> None:
        self._items = deque(items)
        self._error = error
        self._hang = hang
        self._aborted = aborted
        self._woken = asyncio.Event()
        self.sent = 0
        self.cancelled = False

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(0)
        while True:
            if self._items:
                self.sent += 1
                return self._items.popleft()
            if self._error is not None:
                raise self._error
            if not self._hang:
                raise StopAsyncIteration
            await self._woken.wait()

    def cancel(self) -> None:
        self.cancelled = True

    def abort(self) -> None:
        self._items = deque(self._aborted(self.sent) if self._aborted else [])
        self._error, self._hang = None, False
        self._woken.set()


class _Abort:
    """The engine's `abort`: the call in flight with the body's request_id is aborted."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def remote(self, body: Any) -> None:
        self._pool.aborted.append(body.request_id)
        for (_, called), stream in zip(self._pool.calls, self._pool.streams, strict=True):
            if called.request_id == body.request_id:
                stream.abort()


class _Method:
    def __init__(self, pool: Pool, name: str) -> None:
        self._pool, self._name = pool, name

    def remote(self, body: Any, raw_request: Any = None) -> EngineStream:
        self._pool.calls.append((self._name, body))
        self._pool.called.set()
        stream = self._pool.answers.popleft()
        self._pool.streams.append(stream)
        return stream


@dataclass
class Pool:
    """A Serve DeploymentHandle double: scripted answers, and every call's body; also the pool's
    running replicas (running.py)."""

    answers: deque[EngineStream] = field(default_factory=deque)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    streams: list[EngineStream] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  # the request ids of the engine's aborts
    called: asyncio.Event = field(default_factory=asyncio.Event)
    replicas: frozenset[str] | None = None  # the pool's running replicas, as Serve's controller lists them

    def running(self) -> frozenset[str] | None:
        return self.replicas

    def answer(self, *streams: EngineStream) -> None:
        self.answers.extend(streams)

    def options(self, **_: Any) -> Pool:
        return self

    def __getattr__(self, name: str) -> _Method | _Abort:
        if name in ("chat", "completions"):
            return _Method(self, name)
        if name == "abort":
            return _Abort(self)
        raise AttributeError(name)

    @property
    def bodies(self) -> list[Any]:
        return [body for _, body in self.calls]


def completed(content: str = "hello", *, prompt_tokens: int = 9, completion_tokens: int = 2) -> EngineStream:
    return EngineStream(
        [
            ChatCompletionResponse.model_validate(
                {
                    "id": "chatcmpl-1",
                    "model": MODEL,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )
        ]
    )


def engine_error(status: int, message: str = "engine says no") -> EngineStream:
    return EngineStream([ErrorResponse(error=ErrorInfo(message=message, type="error", code=status))])


def _compact(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))  # as vLLM writes its events


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chunk(delta: dict[str, Any], usage: dict[str, int]) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice], "usage": usage}
    return "data: " + _compact(chunk) + "\n\n"


def streamed(
    tokens: int, *, prompt_tokens: int = 9, finish: bool = True, unsent: int = 0, **kwargs: Any
) -> EngineStream:
    """A chat stream as vLLM sends it to the ingress (which always asks for `include_usage` and
    `continuous_usage_stats`): a role chunk, one chunk per token, each with the running usage,
    then (when it finishes) the usage event and [DONE]; one batch per chunk. Aborted, it ends
    as vLLM ends an aborted stream: the usage of every token generated, which is `unsent` more
    than it sent (its last batch, not sent yet), and [DONE]."""

    def end(usage: dict[str, int]) -> list[str]:
        event = _compact({"id": "c", "object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": usage})
        return [f"data: {event}\n\n", "data: [DONE]\n\n"]

    batches = [[_chunk({"role": "assistant", "content": ""}, _usage(prompt_tokens, 0))]]
    batches += [[_chunk({"content": f"t{i}"}, _usage(prompt_tokens, i + 1))] for i in range(tokens)]
    if finish:
        batches.append(end(_usage(prompt_tokens, tokens)))
    return EngineStream(batches, aborted=lambda sent: [end(_usage(prompt_tokens, max(0, sent - 1) + unsent))], **kwargs)


class RecordingRouter(RouterReplicas):
    """The real router client, recording each Complete it sends and whether the router knew it."""

    def __init__(self, address: str) -> None:
        super().__init__(address, route_timeout_s=5.0)
        self.completes: list[Complete] = []

    async def complete(
        self, request_id: str, usage: Usage | None = None, *, stage: Stage = "finished", outcome: Outcome = "ok"
    ) -> bool:
        known = await super().complete(request_id, usage, stage=stage, outcome=outcome)
        self.completes.append(Complete(request_id, stage, usage, outcome, known))
        return known

    @property
    def finished(self) -> list[Complete]:
        return [c for c in self.completes if c.stage == "finished"]


@dataclass(frozen=True)
class Complete:
    request_id: str
    stage: Stage
    usage: Usage | None
    outcome: Outcome
    known: bool  # the router had booked the request


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    return resolve_model(MODEL, progress=lambda _: None).path


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    return write_tenants(tmp_path / "tenants.yaml")


Make = Callable[..., IngressService]


@pytest.fixture
def make_service(checkpoint: Path) -> Make:
    def make(
        decode: Pool,
        prefill: Pool | None = None,
        *,
        tenants: Path | None = None,
        router: RouterReplicas | None = None,
        capacity: int = 0,
        max_waiting: int = 0,
        migration: MigrationSettings | None = None,
    ) -> IngressService:
        model = ServedModel(MODEL, MAX_CONTEXT, False, 0, str(checkpoint), capacity=capacity, max_waiting=max_waiting)
        pools: dict[str, Any] = {"decode": decode} | ({"prefill": prefill} if prefill is not None else {})
        settings = IngressSettings(
            models=(model,),
            limits=LimitsSettings(tenants_file=str(tenants) if tenants else None),
            migration=migration or MigrationSettings(),
        )
        return IngressService({MODEL: pools}, settings, router=router, running={MODEL: decode})

    return make


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[str]:
        return [e for e in self.body.decode().split("\n\n") if e]


async def deliver(response: Response, *, disconnect_after: int | None = None) -> Answer:
    """Sends `response` as the HTTP server would; the client hangs up after `disconnect_after`
    body chunks (0: before the first), or stays to the end."""
    sent: list[dict[str, Any]] = []
    chunk_sent = asyncio.Event()

    async def receive() -> dict[str, Any]:
        while disconnect_after is None or sum(m["type"] == "http.response.body" for m in sent) < disconnect_after:
            chunk_sent.clear()
            await chunk_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        chunk_sent.set()
        await asyncio.sleep(0)

    scope = {"type": "http", "asgi": {"spec_version": "2.0"}, "method": "POST", "path": "/", "headers": []}
    await response(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], headers, body)


def chat(**fields: Any) -> ChatRequest:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the ingress."}]} | fields
    return parse_body(json.dumps(body).encode(), ChatRequest)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def auth(key: str) -> Mapping[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def router() -> Iterator[Callable[..., tuple[RecordingRouter, str]]]:
    """A real router with a registered decode worker (and a prefill worker, which it always
    prefers for prefill, when `disaggregated`); the ingress's client records its Completes."""
    started: list[tuple[ServerThread, list[SimEngine]]] = []

    def start(*, disaggregated: bool = False, admits: Path | None = None) -> tuple[RecordingRouter, str]:
        """`admits`: the tenants file the router admits with (limits in its memory)."""
        admission = {"tenants_file": str(admits)} if admits else {}
        server = ServerThread(config(disaggregation={"min_remote_prefill_tokens": 0}, admission=admission))
        engines = [SimEngine("decode-0")] + ([SimEngine("prefill-0")] if disaggregated else [])
        started.append((server, engines))
        register(server.stub, engines[0])
        if disaggregated:
            register(server.stub, engines[1], role=pb.ROLE_PREFILL)
        return RecordingRouter(server.target), engines[0].worker_id

    yield start
    for server, engines in started:
        server.stop()
        for engine in engines:
            engine.close()
