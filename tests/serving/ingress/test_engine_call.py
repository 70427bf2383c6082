"""The engine call's stream reader alone, with a stand-in for Serve's response generator."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from glmserve.serving.ingress.engine_call import _Stream


class _Call:
    """Answers each read after `release` is set; a cancelled read raises what Serve raises."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = False

    async def __anext__(self) -> str:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            raise RuntimeError("request was cancelled") from None  # as Serve's RequestCancelledError
        return "batch"

    def cancel(self) -> None:
        self.cancelled = True


def test_a_read_outlives_its_readers_cancellation_and_is_returned_to_the_next_reader() -> None:
    async def run() -> list[str]:
        call = _Call()
        stream = _Stream(call)  # type: ignore[arg-type]
        reader = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0)
        reader.cancel()  # the client left mid-read
        await asyncio.gather(reader, return_exceptions=True)
        call.release.set()
        return [await stream.next(), await stream.next()]

    assert asyncio.run(run()) == ["batch", "batch"]


def test_a_cancelled_streams_failed_read_is_never_reported_as_unretrieved() -> None:
    reported: list[dict[str, Any]] = []

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        call = _Call()
        stream = _Stream(call)  # type: ignore[arg-type]
        reader = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        stream.cancel()  # the read ends with Serve's error, and nobody awaits it
        for _ in range(3):
            await asyncio.sleep(0)
        assert call.cancelled
        del stream, reader
        gc.collect()

    asyncio.run(run())
    assert [c["message"] for c in reported] == []
