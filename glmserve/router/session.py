"""One Session stream in the router: the Route and Complete calls an ingress client sends as
messages, each answered once, by id, with the unary call's reply or its status.

Routes run as tasks of their own (they wait for admission and a flow-control slot), so a slow one
holds up no other; Completes are answered as they arrive. One writer sends the replies in the order
they are ready (gRPC allows one write at a time). A Route the client cancels, or one still running
when the stream ends (the client went away), is cancelled like a unary Route whose caller gave up:
the Route undoes its admission and slot itself (service.py), so each is settled exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

import grpc

from glmserve.common.errors import GlmserveError, InvalidRequestError
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.status import to_status

log = logging.getLogger("glmserve.router")


class Calls(Protocol):
    async def route(
        self, request: pb.RouteRequest, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> pb.RouteResponse: ...

    def complete(self, request: pb.CompleteRequest) -> pb.CompleteResponse: ...


def status_reply(
    call_id: int, code: grpc.StatusCode, details: str, trailers: Iterable[tuple[str, str]] = ()
) -> pb.SessionReply:
    trailer_msgs = [pb.Trailer(key=k, value=v) for k, v in trailers]
    status = pb.CallStatus(code=code.value[0], details=details, trailers=trailer_msgs)
    return pb.SessionReply(id=call_id, status=status)


def _error_reply(call_id: int, error: GlmserveError) -> pb.SessionReply:
    return status_reply(call_id, *to_status(error))


async def serve(calls: Calls, context: grpc.aio.ServicerContext) -> None:
    """Answers the stream's messages until the client closes it and every Route it sent is answered."""
    replies: asyncio.Queue[pb.SessionReply | None] = asyncio.Queue()
    routes: dict[int, asyncio.Task[pb.RouteResponse]] = {}

    def start_route(message: pb.SessionMessage) -> None:
        task = asyncio.create_task(calls.route(message.route, message.trace_context.items()))
        routes[message.id] = task
        task.add_done_callback(lambda done: routed(message.id, done))

    def routed(call_id: int, task: asyncio.Task[pb.RouteResponse]) -> None:
        # A callback, not a try around the call: a task cancelled before it ever ran is answered too.
        del routes[call_id]
        if task.cancelled():
            replies.put_nowait(status_reply(call_id, grpc.StatusCode.CANCELLED, "cancelled by the client"))
        elif isinstance(exc := task.exception(), GlmserveError):
            replies.put_nowait(_error_reply(call_id, exc))
        elif exc is not None:  # as a unary handler's: INTERNAL, without the glmserve marker
            log.error("Route on a session failed", exc_info=exc)
            replies.put_nowait(status_reply(call_id, grpc.StatusCode.INTERNAL, f"router error: {exc!r}"))
        else:
            replies.put_nowait(pb.SessionReply(id=call_id, route=task.result()))

    def complete(message: pb.SessionMessage) -> pb.SessionReply:
        try:
            return pb.SessionReply(id=message.id, complete=calls.complete(message.complete))
        except GlmserveError as exc:
            return _error_reply(message.id, exc)

    async def read() -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            assert isinstance(message, pb.SessionMessage)
            kind = message.WhichOneof("call")
            if kind == "cancel":
                if (task := routes.get(message.id)) is not None:
                    task.cancel()
            elif message.id in routes:
                replies.put_nowait(
                    _error_reply(message.id, InvalidRequestError(f"id {message.id} is in use", param="id"))
                )
            elif kind == "route":
                start_route(message)
            elif kind == "complete":
                replies.put_nowait(complete(message))
            else:
                missing = InvalidRequestError("a SessionMessage holds a route, a complete or a cancel", param="call")
                replies.put_nowait(_error_reply(message.id, missing))
        while routes:  # the client closed its side: answer what it sent
            await asyncio.wait(list(routes.values()))
        replies.put_nowait(None)

    await context.send_initial_metadata(())  # the client waits for it before writing (stream.py)
    reader = asyncio.create_task(read())
    try:
        while (reply := await replies.get()) is not None:
            await context.write(reply)
        await reader
    finally:  # the client went away (or cancelled the stream): its Routes still running are undone
        reader.cancel()
        for task in list(routes.values()):
            task.cancel()
