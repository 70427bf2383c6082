"""The client's end of a Session (router.proto, v3): one long-lived stream to a router replica that
carries every Route and Complete of one RouterClient, each matched to its reply by id.

Callers never write to the stream themselves: grpc.aio cancels the whole call when a write is
cancelled, so messages go through a queue that gRPC's own task drains. A Route whose caller gives
up (cancelled, or its deadline passed) sends a Cancel, which undoes it in the router if it is still
waiting or routing; if the decision was made first, its reply still arrives and this end completes
it as cancelled at once. So the router's slot and admission are released exactly once either way,
and nothing waits for the router's sweep.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence

import grpc

from glmserve.router import convert
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.types import Usage


class StreamEnded(Exception):
    """The stream ended before this call's reply came: the router (or gRPC) ended it with `code`.
    UNIMPLEMENTED means the router has no Session (v2): the call never reached it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name} {details}")
        self.code = code
        self.details = details


class Session:
    def __init__(self, stub: pb_grpc.RouterStub, metadata: Sequence[tuple[str, str]]) -> None:
        """Opens the stream (the caller's metadata, i.e. the router's token, goes with it once)."""
        self._outbox: asyncio.Queue[pb.SessionMessage] = asyncio.Queue()
        self._call = stub.Session(self._messages(), metadata=metadata)
        self._waiting: dict[int, tuple[asyncio.Future[pb.SessionReply], str]] = {}
        self._ids = itertools.count(1)
        self.ended: StreamEnded | None = None
        self._reader = asyncio.create_task(self._read(), name="router-session")

    async def _messages(self) -> AsyncIterator[pb.SessionMessage]:
        # The router's first word (its initial metadata, or a refusal: no token, no Session) comes
        # before any write: a write racing a refusal ends the call as INTERNAL, hiding the reason.
        await self._call.initial_metadata()
        while True:
            yield await self._outbox.get()

    async def route(
        self, request: pb.RouteRequest, timeout_s: float, trace_context: Mapping[str, str]
    ) -> pb.SessionReply:
        message = pb.SessionMessage(route=request, trace_context=trace_context)
        return await self._call_with(message, timeout_s, request.request_id)

    async def complete(self, request: pb.CompleteRequest, timeout_s: float) -> pb.SessionReply:
        return await self._call_with(pb.SessionMessage(complete=request), timeout_s, "")

    async def _call_with(self, message: pb.SessionMessage, timeout_s: float, routing: str) -> pb.SessionReply:
        """The reply to `message`; TimeoutError past `timeout_s`. `routing`: the request id of a
        Route, which a caller that gives up cancels."""
        if self.ended is not None:
            raise self.ended
        message.id = call_id = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = (reply, routing)
        self._outbox.put_nowait(message)
        try:
            return await asyncio.wait_for(reply, timeout_s)
        except (asyncio.CancelledError, TimeoutError):
            if routing and self.ended is None:
                self._outbox.put_nowait(pb.SessionMessage(id=call_id, cancel=pb.Cancel()))
            raise

    def _send_cancelled_completion(self, request_id: str) -> None:
        """A Route whose caller gave up after the router decided: settle it as cancelled. Its reply
        is not waited for (the router counts the request done either way)."""
        completion = convert.completion_to_pb(request_id, "finished", Usage(), "cancelled")
        self._outbox.put_nowait(pb.SessionMessage(id=next(self._ids), complete=completion))

    async def _read(self) -> None:
        try:
            while (reply := await self._call.read()) is not grpc.aio.EOF:
                assert isinstance(reply, pb.SessionReply)
                waiting = self._waiting.pop(reply.id, None)
                if waiting is None:  # a completion sent on a caller's behalf
                    continue
                future, routing = waiting
                if not future.done():
                    future.set_result(reply)
                elif routing and reply.WhichOneof("result") == "route":
                    self._send_cancelled_completion(routing)
            code, details = await self._call.code(), await self._call.details()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, "the client closed the stream"
        self.ended = StreamEnded(code, details)
        for future, _ in self._waiting.values():
            if not future.done():
                future.set_exception(self.ended)
        self._waiting.clear()

    async def close(self) -> None:
        """Ends the stream: the router undoes the Routes still waiting on it."""
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
