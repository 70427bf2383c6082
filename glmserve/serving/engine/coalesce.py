"""Adaptive batching of a token stream that never delays a first token.

Ray Serve LLM batches streamed chunks on a fixed interval (50 ms by default), which adds up
to that interval to every request's time to first token. Here a chunk is forwarded the
moment it exists unless the previous batch left less than `min_interval_s` ago; then it
waits out the rest of the interval and goes together with every chunk that arrived
meanwhile. Each batch costs a message to the ingress and a write to the client, whatever
its size: on CPU those relays compete with the engine for cores (benchmarks/serving_overhead
measures the trade). A stream slower than the interval is never delayed; a first token
never is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def coalesce(source: AsyncIterator[T], min_interval_s: float = 0.0) -> AsyncGenerator[list[T], None]:
    queue: asyncio.Queue[object] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except Exception as exc:
            queue.put_nowait(_Failure(exc))
        else:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    next_send = 0.0
    try:
        while True:
            batch: list[T] = []
            item = await queue.get()
            if (wait := next_send - loop.time()) > 0:
                await asyncio.sleep(wait)
            while True:
                if item is _END:
                    if batch:
                        yield batch
                    return
                if isinstance(item, _Failure):
                    if batch:
                        yield batch
                    raise item.exc
                batch.append(item)  # type: ignore[arg-type]
                if queue.empty():
                    break
                item = queue.get_nowait()
            next_send = loop.time() + min_interval_s
            yield batch
    finally:
        # The consumer went away (client disconnect): stop the engine stream, which aborts the request.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
