"""Adaptive batching of a token stream, with no added latency.

Ray Serve LLM batches streamed chunks on a fixed interval (50 ms by default), which adds up
to that interval to every request's time to first token. Here a chunk is forwarded the
moment it exists, together with every chunk that arrived while the previous batch was in
flight: batches grow only when the transport is the bottleneck.
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


async def coalesce(source: AsyncIterator[T]) -> AsyncGenerator[list[T], None]:
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except Exception as exc:
            queue.put_nowait(_Failure(exc))
        else:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            batch: list[T] = []
            item = await queue.get()
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
            yield batch
    finally:
        # The consumer went away (client disconnect): stop the engine stream, which aborts the request.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
