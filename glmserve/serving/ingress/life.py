"""One request's life at the ingress, from its first check to its last byte.

A request takes things it must give back: its plan admission (settled with the tokens actually
used), an engine slot, the router's booking of its workers, its metrics and span. `RequestLife`
records each as it is taken and gives all back in `end`, which runs exactly once, whichever way
the request ends: answered, refused, failed, cancelled while it waited, or cut off by a client
that went away while it streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.responses import JSONResponse, Response

from glmserve.admission.limiter import Limiter
from glmserve.admission.outcome import Admission
from glmserve.admission.slots import PrioritySlots
from glmserve.common.errors import GlmserveError
from glmserve.router.replicas import RouterReplicas, RouterShards
from glmserve.router.types import Outcome, Stage
from glmserve.router.types import Usage as RouterUsage
from glmserve.serving.ingress.errors import error_response, status_of
from glmserve.serving.ingress.metrics import RequestTimer
from glmserve.serving.ingress.reply import Completed, Failed, Reply, Streaming
from glmserve.serving.ingress.responses import ClosingStreamingResponse, Usage

Router = RouterReplicas | RouterShards
CLIENT_CLOSED = 499  # nginx's "client closed request": the client went away first


def outcome_of(status: int) -> Outcome:
    if status == CLIENT_CLOSED:
        return "cancelled"
    return "ok" if status < 400 else "failed"


class Background:
    """Calls that outlive the request they report on (the router's Complete): held until done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, call: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)


class RequestLife:
    def __init__(self, request_id: str, timer: RequestTimer, background: Background) -> None:
        self.request_id = request_id
        self.timer = timer
        self.headers: dict[str, str] = {}  # x-ratelimit-* for whatever the answer is
        self._background = background
        self._admission: tuple[Limiter, Admission] | None = None
        self._slots: PrioritySlots | None = None
        self._router: Router | None = None
        self._on_end: Callable[[], None] | None = None
        self._ended = False
        self._ending = False

    @property
    def ended(self) -> bool:
        return self._ended

    # -- what the request takes ------------------------------------------------------------

    def hold_admission(self, limiter: Limiter, admission: Admission) -> None:
        """An allowed admission by the local limiter: settled with the usage the request ends with."""
        self._admission = (limiter, admission)

    def hold_slot(self, slots: PrioritySlots) -> None:
        self._slots = slots
        self.timer.on_gap = slots.observe_gap

    def hold_booking(self, router: Router, on_end: Callable[[], None] | None = None) -> None:
        """The router routed the request (booked its workers, and admitted it when it admits): it
        hears once how the request ended, with the usage delivered; `on_end` is called then too."""
        self._router = router
        self._on_end = on_end

    def end_later(self, work: Coroutine[Any, Any, Any]) -> None:
        """`work` ends the request (calls `end`) after its response is gone; it is held until done."""
        self._ending = True
        self._background.spawn(work)

    @property
    def ending(self) -> bool:
        """Its end is under way (end_later)."""
        return self._ending

    def prefill_done(self) -> None:
        """The prompt's prefill is over: the router frees the prefill worker's share early."""
        if self._router is not None and not self._ended:
            self._background.spawn(self._complete(self._router, None, "prefill_done", "ok"))

    # -- how it ends -----------------------------------------------------------------------

    def end(self, status: int, usage: Usage) -> None:
        """Gives back everything the request holds, once; later calls do nothing."""
        if self._ended:
            return
        self._ended = True
        if self._slots is not None:
            self._slots.release()
        if self._admission is not None:
            limiter, admission = self._admission
            limiter.settle(admission, output_tokens=usage.completion_tokens, input_tokens=usage.prompt_tokens or None)
        if self._router is not None:
            outcome = outcome_of(status)
            used = RouterUsage(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, outcome != "ok")
            self._background.spawn(self._complete(self._router, used, "finished", outcome))
        if self._on_end is not None:
            self._on_end()
        self.timer.finish(status, usage)

    async def guard(self, work: Awaitable[Reply]) -> Reply:
        """`work`'s reply; a request that raises (an error to answer, or a client gone while it
        waited) ends here with the status it is answered with."""
        try:
            return await work
        except BaseException as exc:
            self.end(status_of(exc), Usage())
            raise

    def respond(self, reply: Reply) -> Response:
        """The HTTP response; a stream's request ends when its body does, or when its client leaves."""
        if isinstance(reply, Failed):
            self.end(reply.status, Usage())
            return error_response(
                reply.status,
                reply.message,
                param=reply.param,
                code=reply.code,
                retry_after_s=reply.retry_after_s,
                headers=self.headers,
            )
        if isinstance(reply, Completed):
            self.end(200, reply.usage)
            return JSONResponse(reply.body, headers=self.headers)
        assert isinstance(reply, Streaming)
        return ClosingStreamingResponse(
            reply.chunks,
            on_close=reply.stop,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **self.headers},
        )

    async def _complete(self, router: Router, usage: RouterUsage | None, stage: Stage, outcome: Outcome) -> None:
        """Settles the router's booking (and its admission, when it admitted the request)."""
        with contextlib.suppress(GlmserveError):  # the router forgets unfinished requests after a TTL
            await router.complete(self.request_id, usage, stage=stage, outcome=outcome)
