"""Prompt block hashes, computed exactly as vLLM's prefix cache computes them.

vLLM (`prefix_caching_hash_algo="sha256_cbor"`) hashes each full block of `block_size` tokens as
    sha256(canonical CBOR of [parent_hash, token_ids, extra_keys])
chained from a root `sha256(cbor(seed))`, where the seed is `PYTHONHASHSEED` when the engine has it
set and "vllm-none-hash" otherwise, and `extra_keys` is `[["cache_salt", salt]]` on block 0 of a
salted request and null elsewhere (no LoRA, no multimodal input). KV events carry the low 64 bits
of each hash as an unsigned int, which is what the index keys on.

An 8K-token prompt is 512 blocks at block size 16: per-block `cbor2.dumps` costs ~1.4 ms, so the
token arrays are CBOR-encoded many blocks at a time with numpy, runs of blocks already hashed for
an earlier request (agentic prompts repeat their prefix) come from a memo, and runs are hashed only
when routing reads that far.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

import cbor2
import numpy as np

DEFAULT_SEED = "vllm-none-hash"
_LOW64 = (1 << 64) - 1
# CBOR unsigned ints: values below 24 are the header byte; else a header then 1, 2, 4 or 8 bytes.
_LIMITS = np.array([24, 1 << 8, 1 << 16, 1 << 32], dtype=np.uint64)
_EXTRA_BYTES = np.array([0, 1, 2, 4, 8])
_HEADERS = np.array([0, 0x18, 0x19, 0x1A, 0x1B], dtype=np.uint8)
_COLUMNS = np.arange(9)
_TRIPLE_AND_PARENT = b"\x83\x58\x20"  # array(3), then byte string(32): the parent hash
_NULL = b"\xf6"
_MEMO_GENERATION = 1 << 16
RUN_BLOCKS = 16  # blocks hashed, memoised and handed out together
_MAX_SPAN_RUNS = 16  # runs CBOR-encoded at once, at most


def to_index_hash(block_hash: bytes | int) -> int:
    """An event's or the router's block hash as the index's key: its low 64 bits."""
    if isinstance(block_hash, int):
        return block_hash & _LOW64
    return int.from_bytes(block_hash[-8:], "big")


def cbor_uints(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Canonical CBOR of each value of a uint64[n] array, concatenated, and the n+1 offsets of
    each value's encoding in it (value i is bytes offsets[i]:offsets[i+1])."""
    n = len(values)
    rows = np.empty((n, 9), dtype=np.uint8)
    rows[:, 1:] = values.astype(">u8").view(np.uint8).reshape(n, 8)
    size_class = np.searchsorted(_LIMITS, values, side="right")
    extra = _EXTRA_BYTES[size_class]
    rows[:, 0] = np.where(size_class == 0, rows[:, 8], _HEADERS[size_class])
    keep = 9 - extra[:, None] <= _COLUMNS
    keep[:, 0] = True
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(extra + 1, out=offsets[1:])
    return rows[keep].tobytes(), offsets


@functools.cache
def _array_header(length: int) -> bytes:
    """CBOR's header of an array of `length` (>= 1) items."""
    return cbor2.dumps([None] * length)[:-length]


@functools.lru_cache(maxsize=4096)
def _salt_keys(cache_salt: str) -> bytes:
    return cbor2.dumps([["cache_salt", cache_salt]], canonical=True)


class _Memo:
    """(parent hash + a run of raw block tokens [+ salt]) -> (the run's last hash, its index keys),
    in two generations so the recently used half survives each reset: at most ~2 x 2^16 runs of up
    to RUN_BLOCKS blocks per block size."""

    __slots__ = ("new", "old")

    def __init__(self) -> None:
        self.new: dict[bytes, tuple[bytes, list[int]]] = {}
        self.old: dict[bytes, tuple[bytes, list[int]]] = {}

    def get(self, key: bytes) -> tuple[bytes, list[int]] | None:
        hit = self.new.get(key)
        if hit is None:
            hit = self.old.get(key)
            if hit is not None:
                self.put(key, hit)
        return hit

    def put(self, key: bytes, value: tuple[bytes, list[int]]) -> None:
        if len(self.new) >= _MEMO_GENERATION:
            self.old, self.new = self.new, {}
        self.new[key] = value


class BlockHasher:
    """vLLM-compatible block hashes for one hash seed; not thread-safe."""

    def __init__(self, seed: str = DEFAULT_SEED) -> None:
        self.root = hashlib.sha256(cbor2.dumps(seed, canonical=True)).digest()
        self._memos: dict[int, _Memo] = {}

    def block_hashes(self, tokens: np.ndarray, block_size: int, cache_salt: str = "") -> list[int]:
        """Index keys of every full block of `tokens` (uint32[n]), in order; n // block_size long."""
        return [key for run in self.runs(tokens, block_size, cache_salt) for key in run]

    def runs(self, tokens: np.ndarray, block_size: int, cache_salt: str = "") -> Iterator[list[int]]:
        """The same keys in runs of up to RUN_BLOCKS blocks, each run computed only when asked for:
        routing stops at the first block no candidate holds, so an uncached tail is not hashed. A
        run seen before (the prefix of an earlier turn) costs one memo lookup. Runs not memoised
        are CBOR-encoded several at a time, twice as many at each encoding: one numpy encoding per
        run cost more than hashing its blocks."""
        n_blocks = len(tokens) // block_size
        memo = self._memos.setdefault(block_size, _Memo())
        raw = np.ascontiguousarray(tokens[: n_blocks * block_size], dtype=np.uint32).tobytes()
        step = 4 * block_size
        head = _array_header(block_size)
        parent = self.root
        encoded, bounds, encoded_from, encoded_to, span = b"", [0], 0, 0, 1  # blocks encoded_from:encoded_to
        for start in range(0, n_blocks, RUN_BLOCKS):
            stop = min(n_blocks, start + RUN_BLOCKS)
            memo_key = parent + raw[start * step : stop * step]
            if start == 0:
                memo_key += cache_salt.encode()
            hit = memo.get(memo_key)
            if hit is None:
                if stop > encoded_to:
                    encoded_from, encoded_to = start, min(n_blocks, start + span * RUN_BLOCKS)
                    span = min(2 * span, _MAX_SPAN_RUNS)
                    chunk = np.asarray(tokens[start * block_size : encoded_to * block_size], np.uint64)
                    encoded, offsets = cbor_uints(chunk)
                    bounds = offsets[::block_size].tolist()
                first = start - encoded_from
                hit = _hash_run(
                    encoded, bounds[first : first + stop - start + 1], head, cache_salt if start == 0 else "", parent
                )
                memo.put(memo_key, hit)
            parent = hit[0]
            yield hit[1]


def _hash_run(
    encoded: bytes, bounds: list[int], head: bytes, cache_salt: str, parent: bytes
) -> tuple[bytes, list[int]]:
    """Chains the blocks whose CBOR token arrays are `head` + encoded[bounds[j]:bounds[j + 1]] onto
    `parent`; `cache_salt` (block 0 of a salted request only) goes into the first block."""
    digests = []
    sha256, prefix = hashlib.sha256, _TRIPLE_AND_PARENT
    tail = _salt_keys(cache_salt) if cache_salt else _NULL
    for j in range(len(bounds) - 1):
        parent = sha256(prefix + parent + head + encoded[bounds[j] : bounds[j + 1]] + tail).digest()
        digests.append(parent)
        tail = _NULL
    return parent, [int.from_bytes(d[-8:], "big") for d in digests]


class PromptHashes:
    """A prompt's block hashes, in runs, shared by several readers: each run is computed once,
    and only when the furthest reader gets to it."""

    def __init__(self, runs: Iterator[list[int]]) -> None:
        self._pending = runs
        self._known: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        known, i = self._known, 0
        while True:
            while i < len(known):  # including what other readers added meanwhile
                yield known[i]
                i += 1
            run = next(self._pending, None)
            if run is None:
                return
            known.append(run)

    def computed(self) -> list[int]:
        """The hashes some reader has asked for so far, without computing more."""
        return [h for run in self._known for h in run]
