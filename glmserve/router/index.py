"""The precise KV index: block hash -> the workers whose engines hold that block.

Holders are a bitmask of worker slots, so matching a prompt against every candidate at once is
one dict lookup and one AND per block (an 8K-token prompt is 512 blocks at block size 16).

Besides the blocks engines reported, the index holds blocks it *expects*: those of a prompt just
sent to a worker, until that worker's events report them or a deadline passes. An engine
publishes a block only once its prefill is done, seconds later under load; without expectations,
requests sharing a prefix that arrive meanwhile (an agent's parallel sub-tasks, a tenant's users
sharing a system prompt) would see it cached nowhere and scatter, each prefilling it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from glmserve.router.events import AllBlocksCleared, BlockRemoved, BlockStored, Event


class KVIndex:
    def __init__(self) -> None:
        self._holders: dict[int, int] = {}
        self._blocks: dict[int, set[int]] = {}  # slot -> hashes it holds
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._expected: dict[int, int] = {}  # block hash -> slots expecting it
        self._expected_until: dict[int, dict[int, float]] = {}  # slot -> hash -> deadline
        self._deadlines: deque[tuple[float, int, Sequence[int]]] = deque()  # in deadline order

    def attach(self, worker_id: str) -> None:
        if worker_id not in self._slots:
            slot = self._free.pop() if self._free else len(self._slots)
            self._slots[worker_id] = slot
            self._blocks[slot] = set()
            self._expected_until[slot] = {}

    def detach(self, worker_id: str) -> None:
        if worker_id in self._slots:
            self.clear(worker_id)
            slot = self._slots.pop(worker_id)
            del self._blocks[slot]
            del self._expected_until[slot]
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
        expected = self._expected_until[slot]
        for h in hashes:
            if h in held:
                held.discard(h)
                self._unhold(self._holders, h, ~(1 << slot))
            if expected.pop(h, None) is not None:  # evicted before (or right after) it was reported
                self._unhold(self._expected, h, ~(1 << slot))

    def clear(self, worker_id: str) -> None:
        slot = self._slots[worker_id]
        keep = ~(1 << slot)
        for h in self._blocks[slot]:
            self._unhold(self._holders, h, keep)
        self._blocks[slot] = set()
        for h in self._expected_until[slot]:
            self._unhold(self._expected, h, keep)
        self._expected_until[slot] = {}

    def expect(self, worker_id: str, hashes: Sequence[int], until: float) -> None:
        """`worker_id` was sent a prompt with these blocks: count them as held until `until`."""
        slot = self._slots.get(worker_id)
        if slot is None or not hashes:
            return
        bit = 1 << slot
        expected, deadlines = self._expected, self._expected_until[slot]
        for h in hashes:
            expected[h] = expected.get(h, 0) | bit
            deadlines[h] = until
        self._deadlines.append((until, slot, hashes))

    def expire(self, now: float) -> None:
        """Drops expectations whose deadline passed (a later `expect` of a block extends it)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, slot, hashes = self._deadlines.popleft()
            deadlines = self._expected_until.get(slot)
            if deadlines is None:  # the worker left
                continue
            for h in hashes:
                until = deadlines.get(h)
                if until is not None and until <= now:
                    del deadlines[h]
                    self._unhold(self._expected, h, ~(1 << slot))

    @staticmethod
    def _unhold(holders: dict[int, int], block_hash: int, keep: int) -> None:
        rest = holders.get(block_hash, 0) & keep
        if rest:
            holders[block_hash] = rest
        else:
            holders.pop(block_hash, None)

    def blocks(self, worker_id: str) -> int:
        return len(self._blocks[self._slots[worker_id]])

    def size(self) -> int:
        """(worker, block) entries over all workers."""
        return sum(len(b) for b in self._blocks.values())

    def prefix_blocks(self, runs: Iterable[Sequence[int]], worker_ids: Iterable[str]) -> dict[str, int]:
        """For each worker, how many leading blocks of the prompt it holds or is expected to; the
        prompt's block hashes come in runs (BlockHasher.runs). vLLM's prefix hit stops at the first
        missing block, so later blocks a worker happens to hold do not count, and no run is read
        past the first block that no worker holds."""
        result = dict.fromkeys(worker_ids, 0)
        owner = {self._slots[w]: w for w in result if w in self._slots}
        active = sum(1 << slot for slot in owner)
        holders, expected = self._holders, self._expected
        matched = 0
        for run in runs if active else ():
            for h in run:
                held = holders.get(h, 0) & active
                if held != active:
                    held |= expected.get(h, 0) & active  # only where reports fall short: half the lookups
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
