"""The precise KV index: block hash -> the workers whose engines hold that block.

Holders are a bitmask of worker slots, so matching a prompt against every candidate at once is
one dict lookup and one AND per block (an 8K-token prompt is 512 blocks at block size 16).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from glmserve.router.events import AllBlocksCleared, BlockRemoved, BlockStored, Event


class KVIndex:
    def __init__(self) -> None:
        self._holders: dict[int, int] = {}
        self._blocks: dict[int, set[int]] = {}  # slot -> hashes it holds
        self._slots: dict[str, int] = {}
        self._free: list[int] = []

    def attach(self, worker_id: str) -> None:
        if worker_id not in self._slots:
            slot = self._free.pop() if self._free else len(self._slots)
            self._slots[worker_id] = slot
            self._blocks[slot] = set()

    def detach(self, worker_id: str) -> None:
        if worker_id in self._slots:
            self.clear(worker_id)
            slot = self._slots.pop(worker_id)
            del self._blocks[slot]
            self._free.append(slot)

    def apply(self, worker_id: str, event: Event) -> None:
        if isinstance(event, BlockStored):
            self.store(worker_id, event.block_hashes)
        elif isinstance(event, BlockRemoved):
            self.remove(worker_id, event.block_hashes)
        elif isinstance(event, AllBlocksCleared):
            self.clear(worker_id)

    def store(self, worker_id: str, hashes: Iterable[int]) -> None:
        slot = self._slots[worker_id]
        bit = 1 << slot
        held = self._blocks[slot]
        holders = self._holders
        for h in hashes:
            holders[h] = holders.get(h, 0) | bit
            held.add(h)

    def remove(self, worker_id: str, hashes: Iterable[int]) -> None:
        slot = self._slots[worker_id]
        held = self._blocks[slot]
        for h in hashes:
            if h in held:
                held.discard(h)
                self._unhold(h, ~(1 << slot))

    def clear(self, worker_id: str) -> None:
        slot = self._slots[worker_id]
        keep = ~(1 << slot)
        for h in self._blocks[slot]:
            self._unhold(h, keep)
        self._blocks[slot] = set()

    def _unhold(self, block_hash: int, keep: int) -> None:
        rest = self._holders[block_hash] & keep
        if rest:
            self._holders[block_hash] = rest
        else:
            del self._holders[block_hash]

    def blocks(self, worker_id: str) -> int:
        return len(self._blocks[self._slots[worker_id]])

    def size(self) -> int:
        """(worker, block) entries over all workers."""
        return sum(len(b) for b in self._blocks.values())

    def prefix_blocks(self, runs: Iterable[Sequence[int]], worker_ids: Iterable[str]) -> dict[str, int]:
        """For each worker, how many leading blocks of the prompt it holds; the prompt's block
        hashes come in runs (BlockHasher.runs). vLLM's prefix hit stops at the first missing block,
        so later blocks a worker happens to hold do not count, and no run is read past the first
        block that no worker holds."""
        result = dict.fromkeys(worker_ids, 0)
        owner = {self._slots[w]: w for w in result if w in self._slots}
        active = sum(1 << slot for slot in owner)
        holders = self._holders
        matched = 0
        for run in runs if active else ():
            for h in run:
                held = holders.get(h, 0) & active
                if held != active:
                    self._settle(active & ~held, matched, owner, result)
                    active = held
                    if not active:
                        break
                matched += 1
            if not active:
                break
        self._settle(active, matched, owner, result)
        return result

    @staticmethod
    def _settle(slots: int, blocks: int, owner: dict[int, str], result: dict[str, int]) -> None:
        while slots:
            low = slots & -slots
            result[owner[low.bit_length() - 1]] = blocks
            slots ^= low
