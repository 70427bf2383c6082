"""A uint64 -> int32 hash table in two numpy arrays, for the KV index's tens of millions of block
hashes: 12 bytes a slot at 47-70% load, ~21 bytes per key, where a dict of Python ints costs ~100.
Open addressing over buckets of 16 slots, probed a whole bucket at a time: a key is nearly always
in its home bucket, so a batch of keys is looked up in one or two vectorised steps (slot-by-slot
linear probing took ~30 steps for the longest chain of a 256-key batch at this load).

A key's home bucket is the top 32 bits of the key times an odd constant (block hashes are uniform
already; tests' and other hash algorithms' keys need not be), scaled to the bucket count. Keys 0
and 1 mark empty and deleted slots, so a hash of 0 or 1 is stored as 2 or 3 (a 2^-63 chance of
merging two blocks, far below the hash's own collision rate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EMPTY = np.uint64(0)
DELETED = np.uint64(1)
MISSING = -1  # the value of a key the table does not hold; also what `insert` gives new keys
_MAX_LOAD = 0.7  # of live plus deleted slots: linear probing slows sharply past this
_GROWTH = 1.5
_RESERVED_LOAD = 0.65  # a reserved table's load once every engine's cache is full
_MIN_CAPACITY = 1024
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd
_WAYS = 16  # slots per bucket: 8 overflowed often enough at this load to double the probe steps


def as_keys(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    """Block hashes (ints below 2^64, or a uint64 array: a prompt's) as the table's uint64 keys."""
    if isinstance(hashes, np.ndarray):  # a new array: the caller's (a memoised run) stays as it was
        return np.where(hashes <= DELETED, hashes + np.uint64(2), hashes).astype(np.uint64, copy=False)
    keys = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
    keys[keys <= DELETED] += np.uint64(2)
    return keys


class BlockTable:
    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        self.live = 0
        self._deleted = 0
        self._allocate(max(capacity, _MIN_CAPACITY))

    def _allocate(self, capacity: int) -> None:
        buckets = -(-capacity // _WAYS)
        self.keys = np.zeros(buckets * _WAYS, dtype=np.uint64)
        self.values = np.full(buckets * _WAYS, MISSING, dtype=np.int32)
        self._rows = self.keys.reshape(buckets, _WAYS)
        self._buckets = np.uint64(buckets)

    @property
    def capacity(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.values.nbytes)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        mixed = keys * _MIX  # wraps: Fibonacci hashing, so small or patterned keys spread too
        return ((mixed >> np.uint64(32)) * self._buckets >> np.uint64(32)).astype(np.intp)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key (uint64, from `as_keys`), MISSING where the table lacks it."""
        return self._find(keys)[0]

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, bool]:
        """`find`, and whether every key was found (then no slot is MISSING). A bucket's EMPTY slots
        are its last ones (a key takes the first free slot, a deleted key leaves DELETED), so a bucket
        is full when its last slot is not EMPTY: only then may a key it lacks be further on."""
        bucket = self._home(keys)
        rows = self._rows.take(bucket, axis=0)  # take(), not fancy indexing: a faster row gather
        found = bucket * _WAYS + (rows == keys[:, None]).argmax(axis=1)
        hit = self.keys.take(found) == keys  # cheaper than any() over the rows' matches
        if hit.all():  # the common case: every key in its home bucket
            return found, True
        missed = np.flatnonzero(~hit)
        found[missed] = MISSING
        todo = missed[rows[missed, -1] != EMPTY]
        bucket, buckets = bucket[todo], len(self._rows)
        while len(todo):
            bucket = bucket + 1
            bucket[bucket == buckets] = 0
            rows = self._rows.take(bucket, axis=0)
            slot = bucket * _WAYS + (rows == keys[todo, None]).argmax(axis=1)
            hit = self.keys.take(slot) == keys[todo]
            found[todo[hit]] = slot[hit]
            going = ~hit & (rows[:, -1] != EMPTY)
            todo, bucket = todo[going], bucket[going]
        return found, False

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key (uint64, from `as_keys`), MISSING where the table lacks it. Not
        `values[find(keys)]`: MISSING (-1) as an index reads the last slot, a live key's value."""
        found, complete = self._find(keys)
        values = self.values.take(found)
        if not complete:
            values[found == MISSING] = MISSING
        return values

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each of these distinct keys, adding (with value MISSING) those the table
        lacks."""
        slots = self.find(keys)
        new = slots == MISSING
        if new.any():
            fresh = keys[new]
            if (self.live + self._deleted + len(fresh)) > _MAX_LOAD * len(self.keys):
                self._rehash(self.live + len(fresh))
                slots[~new] = self.find(keys[~new])  # the rehash moved them
            slots[new] = self._place(fresh)
        return slots

    def _place(self, keys: np.ndarray) -> np.ndarray:
        """Puts distinct keys known to be absent in the first free (empty or deleted) slot of their
        chain of buckets; of several keys after the same slot, one takes it, the others go on."""
        placed = np.empty(len(keys), dtype=np.intp)
        todo = np.arange(len(keys))
        bucket = self._home(keys)
        buckets = len(self._rows)
        reused = 0
        while len(todo):
            free = self._rows[bucket] <= DELETED
            room = free.any(axis=1)
            at = bucket[room] * _WAYS + free[room].argmax(axis=1)
            candidates = todo[room]
            reused_before = self.keys[at] == DELETED
            self.keys[at] = keys[candidates]  # of several writes to one slot, one stays
            won = self.keys[at] == keys[candidates]
            placed[candidates[won]] = at[won]
            reused += int(np.count_nonzero(reused_before & won))
            going = np.ones(len(todo), dtype=bool)
            going[np.flatnonzero(room)[won]] = False
            bucket[~room] += 1  # full: the next bucket; lost a race: this bucket's next free slot
            todo, bucket = todo[going], bucket[going]
            bucket[bucket == buckets] = 0
        self.live += len(keys)
        self._deleted -= reused
        return placed

    def delete(self, slots: np.ndarray) -> None:
        """Frees these (distinct, occupied) slots."""
        self.keys[slots] = DELETED
        self.values[slots] = MISSING
        self.live -= len(slots)
        self._deleted += len(slots)

    def reserve(self, keys: int) -> None:
        """Room for `keys` keys without growing: a growth rehashes every key at once (seconds at
        tens of millions), so the index sizes the table from the engines' cache sizes up front."""
        if keys > _MAX_LOAD * len(self.keys):
            self._rehash(self.live, capacity=max(int(keys / _RESERVED_LOAD), int(len(self.keys) * _GROWTH)))

    def _rehash(self, live: int, capacity: int = 0) -> None:
        """Into a new table sized for `live` keys: sorted by home bucket, each key's rank among its
        bucket's keys is its way; the few past a bucket's ways are placed as usual."""
        held = self.keys > DELETED
        keys, values = self.keys[held], self.values[held]
        self._allocate(max(_MIN_CAPACITY, capacity or int(live * _GROWTH / _MAX_LOAD)))
        home = self._home(keys)
        order = np.argsort(home)
        keys, values, home = keys[order], values[order], home[order]
        way = np.arange(len(keys)) - np.searchsorted(home, home)
        fits = way < _WAYS
        slots = home[fits] * _WAYS + way[fits]
        self.keys[slots], self.values[slots] = keys[fits], values[fits]
        self.live, self._deleted = int(np.count_nonzero(fits)), 0
        self.values[self._place(keys[~fits])] = values[~fits]
