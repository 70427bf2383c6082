"""A discrete-event loop in simulated time: callbacks run in time order, ties in schedule order."""

from __future__ import annotations

import heapq
from collections.abc import Callable


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._scheduled = 0

    def at(self, when_s: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when_s, self._scheduled, callback))
        self._scheduled += 1

    def after(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.at(self.now + delay_s, callback)

    def run(self) -> None:
        while self._heap:
            self.now, _, callback = heapq.heappop(self._heap)
            callback()
