"""An engine's prefix cache as vLLM keeps it: full blocks by chained hash, evicted least recently
used first when the cache is full, reporting what it stored and evicted (the events vLLM emits)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class BlockCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def cached_prefix(self, hashes: Sequence[int]) -> int:
        """Leading blocks present: vLLM's prefix hit stops at the first miss."""
        for i, h in enumerate(hashes):
            if h not in self._blocks:
                return i
        return len(hashes)

    def store(self, hashes: Sequence[int]) -> tuple[list[int], list[int]]:
        """Marks the blocks used (hits move to the back of the LRU) and adds the missing ones,
        evicting the least recently used others past capacity. Returns (stored, evicted)."""
        stored = []
        for h in hashes:
            if h in self._blocks:
                self._blocks.move_to_end(h)
            else:
                self._blocks[h] = None
                stored.append(h)
        evicted = []
        while len(self._blocks) > self.capacity:
            evicted.append(self._blocks.popitem(last=False)[0])
        return stored, evicted
