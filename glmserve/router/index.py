"""The precise KV index: block hash -> the workers whose engines hold that block.

Sized for a fleet: ~1,250 engines x ~33,000 blocks is ~41M (worker, block) entries. A block's
holders are one int32 in a numpy hash table (blocktable.py): the worker's slot when one worker
holds it (nearly every block: prefix-aware routing keeps a prefix on few engines), else the index
of a bitmask of slots in `_shared`. So an entry costs ~21 bytes whatever the number of workers (a
bitmask per block as wide as the worker count cost 156 bytes at 64 workers and 292 at 2,048), and
an event's blocks are stored or removed in a few vectorised steps. Matching a prompt walks its
blocks in runs of 16 looked up at once, ANDing holder masks, so it costs per prompt block, not per
worker.

Besides the blocks engines reported, the index holds blocks it *expects*: those of a prompt just
sent to a worker, until that worker's events report them or a deadline passes. An engine
publishes a block only once its prefill is done, seconds later under load; without expectations,
requests sharing a prefix that arrive meanwhile (an agent's parallel sub-tasks, a tenant's users
sharing a system prompt) would see it cached nowhere and scatter, each prefilling it again. They
live in dicts: they are as many as the blocks routed in the last `expect_s`, not the fleet's cache.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import numpy as np

from glmserve.router.blocktable import MISSING, BlockTable, as_keys
from glmserve.router.events import AllBlocksCleared, BlockRemoved, BlockStored, Event

_SHARED = -2  # holder codes at or below this: _shared[_SHARED - code]
_MAX_CHUNK_RUNS = 16
# Holders read bit by bit up to this many, in a few array steps above it (a bit costs a Python step,
# the array steps a fixed few microseconds)
_BIT_LOOP_UP_TO = 16


class KVIndex:
    def __init__(self) -> None:
        self._table = BlockTable()
        # Bitmasks of slots, for blocks several workers hold: one entry per distinct set of holders,
        # shared by every block it holds (with a count of them), so that a context many engines
        # cached is one stretch of equal codes, which a walk passes in one step, not one per block.
        self._shared: list[int] = []
        self._refs: list[int] = []  # blocks whose code is each entry
        self._interned: dict[int, int] = {}  # mask -> its entry
        self._free_shared: list[int] = []
        self._held: list[int] = []  # slot -> blocks it holds
        self._cache_blocks: list[int] = []  # slot -> blocks its engine can cache (0: unknown)
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []  # slot -> worker id
        self._free: list[int] = []
        self._expected: dict[int, int] = {}  # block hash -> slots expecting it
        self._expected_until: dict[int, dict[int, float]] = {}  # slot -> hash -> deadline
        self._deadlines: deque[tuple[float, int, Sequence[int]]] = deque()  # in deadline order

    def attach(self, worker_id: str, cache_blocks: int = 0) -> None:
        """A worker whose engine caches up to `cache_blocks` blocks (0: unknown): the table makes
        room for them now, not in a growth while events stream in."""
        if worker_id not in self._slots:
            slot = self._free.pop() if self._free else len(self._ids)
            if slot == len(self._ids):
                self._ids.append(None)
                self._held.append(0)
                self._cache_blocks.append(0)
            self._slots[worker_id] = slot
            self._ids[slot] = worker_id
            self._cache_blocks[slot] = cache_blocks
            self._table.reserve(sum(self._cache_blocks))
            self._expected_until[slot] = {}

    def detach(self, worker_id: str) -> None:
        if worker_id in self._slots:
            self.clear(worker_id)
            slot = self._slots.pop(worker_id)
            self._ids[slot] = None
            self._cache_blocks[slot] = 0
            del self._expected_until[slot]
            self._free.append(slot)

    def mask(self, worker_ids: Iterable[str]) -> int:
        """The slots of these workers (the known ones) as a bitmask, for `longest`."""
        slots = self._slots
        return sum(1 << slots[w] for w in worker_ids if w in slots)

    def apply(self, worker_id: str, event: Event) -> None:
        if isinstance(event, BlockStored):
            self.store(worker_id, event.block_hashes)
        elif isinstance(event, BlockRemoved):
            self.remove(worker_id, event.block_hashes)
        elif isinstance(event, AllBlocksCleared):
            self.clear(worker_id)

    def store(self, worker_id: str, hashes: Sequence[int]) -> None:
        if not len(hashes):
            return
        slot = self._slots[worker_id]
        table = self._table
        where = table.insert(np.unique(as_keys(hashes)))
        codes = table.values[where]
        first = codes == MISSING
        table.values[where[first]] = slot
        added = int(np.count_nonzero(first))
        bit = 1 << slot
        for at, code in zip(
            where[~first & (codes != slot)].tolist(), codes[~first & (codes != slot)].tolist(), strict=True
        ):
            if code >= 0:  # a second holder: the block becomes shared
                table.values[at] = self._share((1 << code) | bit)
                added += 1
            elif not self._shared[_SHARED - code] & bit:
                table.values[at] = self._share(self._shared[_SHARED - code] | bit)
                self._unref(_SHARED - code)
                added += 1
        self._held[slot] += added

    def _share(self, mask: int) -> int:
        """The code of the entry for this set of holders (made if new), counting one more block."""
        i = self._interned.get(mask)
        if i is None:
            if self._free_shared:
                i = self._free_shared.pop()
                self._shared[i], self._refs[i] = mask, 0
            else:
                i = len(self._shared)
                self._shared.append(mask)
                self._refs.append(0)
            self._interned[mask] = i
        self._refs[i] += 1
        return _SHARED - i

    def _unref(self, i: int) -> None:
        self._refs[i] -= 1
        if not self._refs[i]:
            del self._interned[self._shared[i]]
            self._free_shared.append(i)

    def remove(self, worker_id: str, hashes: Sequence[int]) -> None:
        slot = self._slots[worker_id]
        expected = self._expected_until[slot]
        if expected:
            for h in hashes:
                if expected.pop(h, None) is not None:  # evicted before (or right after) it was reported
                    self._unexpect(h, ~(1 << slot))
        if not len(hashes):
            return
        table = self._table
        where = table.find(np.unique(as_keys(hashes)))
        where = where[where != MISSING]
        codes = table.values[where]
        mine = codes == slot
        table.delete(where[mine])
        removed = int(np.count_nonzero(mine))
        shared = codes <= _SHARED
        removed += self._unshare(where[shared].tolist(), codes[shared].tolist(), slot)
        self._held[slot] -= removed

    def _unshare(self, where: list[int], codes: list[int], slot: int) -> int:
        """Takes `slot` out of these shared blocks' masks; a block left with one holder goes back to
        a plain slot. Returns how many of them held it."""
        bit, removed = 1 << slot, 0
        for at, code in zip(where, codes, strict=True):
            mask = self._shared[_SHARED - code]
            if mask & bit:
                removed += 1
                mask ^= bit
                self._table.values[at] = self._share(mask) if mask & (mask - 1) else mask.bit_length() - 1
                self._unref(_SHARED - code)
        return removed

    def clear(self, worker_id: str) -> None:
        """Drops everything the worker holds: a scan of the whole table, for an engine's restart or
        departure (rare), instead of a per-worker list of its blocks (as big as the index)."""
        slot = self._slots[worker_id]
        table = self._table
        if self._held[slot]:
            table.delete(np.flatnonzero(table.values == slot))
            shared = np.flatnonzero(table.values <= _SHARED)
            self._unshare(shared.tolist(), table.values[shared].tolist(), slot)
            self._held[slot] = 0
        keep = ~(1 << slot)
        for h in self._expected_until[slot]:
            self._unexpect(h, keep)
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
                    self._unexpect(h, ~(1 << slot))

    def _unexpect(self, block_hash: int, keep: int) -> None:
        rest = self._expected.get(block_hash, 0) & keep
        if rest:
            self._expected[block_hash] = rest
        else:
            self._expected.pop(block_hash, None)

    def blocks(self, worker_id: str) -> int:
        return self._held[self._slots[worker_id]]

    def size(self) -> int:
        """(worker, block) entries over all workers."""
        return sum(self._held)

    def nbytes(self) -> int:
        """Memory of the reported blocks' table (the bulk of the index)."""
        return self._table.nbytes()

    def prefix_blocks(self, runs: Iterable[Sequence[int] | np.ndarray], worker_ids: Iterable[str]) -> dict[str, int]:
        """For each worker, how many leading blocks of the prompt it holds or is expected to; the
        prompt's block hashes come in runs (BlockHasher.runs). vLLM's prefix hit stops at the first
        missing block, so later blocks a worker happens to hold do not count, and no run is read
        past the first block that no worker holds."""
        result = dict.fromkeys(worker_ids, 0)
        for mask, blocks in self.walk(runs, self.mask(result)):
            result.update(dict.fromkeys(self._owners(mask), blocks))
        return result

    def longest(self, runs: Iterable[Sequence[int] | np.ndarray], among: int, limit: int) -> dict[str, int]:
        """The workers of the bitmask `among` that hold (or are expected to) the longest prefixes of
        the prompt, with their prefix in blocks: at least `limit` of them if as many hold any of it
        (all tied with the last one taken). Workers holding none of it are left out, so this costs
        per prompt block and per worker returned, not per worker of `among`."""
        return self.longest_of(self.walk(runs, among), limit)

    def longest_of(self, ends: list[tuple[int, int]], limit: int) -> dict[str, int]:
        """`longest` from a `walk` already made."""
        result: dict[str, int] = {}
        for mask, blocks in reversed(ends):
            if len(result) >= limit or not blocks:
                break
            result.update(dict.fromkeys(self._owners(mask), blocks))
        return result

    def blocks_of(self, ends: list[tuple[int, int]], worker_ids: Iterable[str]) -> dict[str, int]:
        """The prefix in blocks of each of these workers that the `walk` made `ends` covered (the
        others are left out): a decision walks the prompt once for its whole pool, then reads
        any candidate's prefix from the walk instead of walking again for them."""
        slots, result = self._slots, {}
        for worker_id in worker_ids:
            slot = slots.get(worker_id)
            if slot is None:
                continue
            bit = 1 << slot
            for mask, blocks in ends:
                if mask & bit:
                    result[worker_id] = blocks
                    break
        return result

    def walk(self, runs: Iterable[Sequence[int] | np.ndarray], active: int) -> list[tuple[int, int]]:
        """(slots, prefix blocks) in increasing prefix length: the workers of `active` whose match
        ends at each length, the last entry those that hold the whole prompt (each worker of
        `active` is in exactly one entry).

        Consecutive blocks with the same holders (a shared context, then a conversation on one
        engine) are one step: once `active` is within a block's holders, the blocks after it with
        the same holder code match too without looking at them one by one."""
        ends: list[tuple[int, int]] = []
        shared, expected = self._shared, self._expected
        matched = 0
        for chunk in _chunks(runs) if active else ():
            codes = self._table.lookup(as_keys(chunk))
            changes = np.flatnonzero(codes[1:] != codes[:-1]) + 1
            bounds = [0, *changes.tolist(), len(chunk)]
            hashes: list[int] = chunk.tolist() if expected else []  # the expectations' dict keys
            for first, stop, code in zip(bounds[:-1], bounds[1:], codes[bounds[:-1]].tolist(), strict=True):
                if code >= 0:
                    holders = 1 << code
                elif code == MISSING:
                    holders = 0
                else:
                    holders = shared[_SHARED - code]
                for i in range(first, stop):
                    held = holders & active
                    if held == active:  # so are the rest of this segment's
                        matched += stop - i
                        break
                    if expected:  # only where reports fall short
                        held |= expected.get(hashes[i], 0) & active
                    if held != active:
                        ends.append((active & ~held, matched))
                        active = held
                        if not active:
                            break
                    matched += 1
                if not active:
                    break
            if not active:
                break
        ends.append((active, matched))
        return ends

    def _owners(self, slots: int) -> list[str]:
        ids, owners = self._ids, []
        if slots.bit_count() > _BIT_LOOP_UP_TO:  # a context cached on many engines: ~80 of 1,250
            bits = np.unpackbits(
                np.frombuffer(slots.to_bytes(-(-slots.bit_length() // 8), "little"), np.uint8), bitorder="little"
            )
            return [w for w in map(ids.__getitem__, np.flatnonzero(bits).tolist()) if w is not None]
        while slots:
            low = slots & -slots
            worker = ids[low.bit_length() - 1]
            if worker is not None:
                owners.append(worker)
            slots ^= low
        return owners


def _chunks(runs: Iterable[Sequence[int] | np.ndarray]) -> Iterator[np.ndarray]:
    """The runs' hashes in growing chunks (1, 2, 4, 8, then 16 runs), each looked up in one call: a
    lookup per run cost more than the rest of a decision, while reading ahead hashes no more runs
    past the first block no worker holds than before it (a prompt is hashed as it is read)."""
    it = iter(runs)
    size = 1
    while True:
        chunk = [np.asarray(run, dtype=np.uint64) for run in islice(it, size)]  # no copy of a prompt's
        if not chunk:
            return
        yield np.concatenate(chunk)
        size = min(2 * size, _MAX_CHUNK_RUNS)
