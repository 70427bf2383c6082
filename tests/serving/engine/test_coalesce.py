import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from glmserve.serving.engine.coalesce import coalesce


async def _source(items: list[int], delay: float = 0.0, fail_at: int | None = None) -> AsyncIterator[int]:
    for i, item in enumerate(items):
        if fail_at == i:
            raise ValueError("engine died")
        if delay:
            await asyncio.sleep(delay)
        yield item


async def _collect(gen: AsyncIterator[list[int]], consumer_delay: float = 0.0) -> list[list[int]]:
    out = []
    async for batch in gen:
        out.append(batch)
        await asyncio.sleep(consumer_delay)
    return out


def test_fast_consumer_gets_each_item_alone() -> None:
    batches = asyncio.run(_collect(coalesce(_source([1, 2, 3], delay=0.01))))
    assert batches == [[1], [2], [3]]


def test_slow_consumer_gets_items_coalesced_in_order() -> None:
    batches = asyncio.run(_collect(coalesce(_source(list(range(20)), delay=0.001)), consumer_delay=0.02))
    assert [x for b in batches for x in b] == list(range(20))
    assert len(batches) < 20


def test_first_item_is_not_delayed() -> None:
    async def first_latency() -> float:
        gen = coalesce(_source([1, 2], delay=0.0))
        t = asyncio.get_running_loop().time()
        await gen.__anext__()
        await gen.aclose()
        return asyncio.get_running_loop().time() - t

    assert asyncio.run(first_latency()) < 0.01


def test_source_error_surfaces_after_delivered_items() -> None:
    async def run() -> list[list[int]]:
        out: list[list[int]] = []

        async def drain() -> None:
            async for batch in coalesce(_source([1, 2, 3], fail_at=2)):
                out.append(batch)

        with pytest.raises(ValueError, match="engine died"):
            await drain()
        return out

    assert [x for b in asyncio.run(run()) for x in b] == [1, 2]


def test_closing_the_consumer_cancels_the_source() -> None:
    cancelled = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield 1
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def run() -> None:
        gen = coalesce(endless())
        await gen.__anext__()
        await gen.aclose()
        await asyncio.wait_for(cancelled.wait(), 1)

    asyncio.run(run())


async def _timed(gen: AsyncIterator[list[int]]) -> list[tuple[float, list[int]]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    return [(loop.time() - start, batch) async for batch in gen]


def test_a_fast_stream_is_sent_at_most_once_per_interval_but_its_first_item_at_once() -> None:
    timed = asyncio.run(_timed(coalesce(_source(list(range(30)), delay=0.005), min_interval_s=0.05)))
    times = [t for t, _ in timed]
    assert timed[0][1] == [0] and times[0] < 0.03  # the first token is never held back
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(times))
    assert [x for _, batch in timed for x in batch] == list(range(30))
    assert len(timed) < 10  # 30 items over ~0.15 s: batched, not one message each


def test_a_stream_slower_than_the_interval_is_not_delayed() -> None:
    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        produced: list[float] = []

        async def slow() -> AsyncIterator[int]:
            for i in range(4):
                await asyncio.sleep(0.08)
                produced.append(loop.time())
                yield i

        received = [loop.time() async for _ in coalesce(slow(), min_interval_s=0.05)]
        return [r - p for r, p in zip(received, produced, strict=True)]

    assert max(asyncio.run(run())) < 0.03
