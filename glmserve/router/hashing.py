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
_LIMITS = (24, 1 << 8, 1 << 16, 1 << 32)
_HEADERS = np.array([0, 0x18, 0x19, 0x1A, 0x1B], dtype=np.uint8)
_SIZES = np.array([1, 2, 3, 5, 9])
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
    """Canonical CBOR of each value of an unsigned int array, concatenated, and the n+1 offsets of
    each value's encoding in it (value i is bytes offsets[i]:offsets[i+1]). A uint32 array (token
    ids) is laid out 5 bytes a value instead of 9: the encoding is a pass over that layout."""
    n = len(values)
    width = 4 if values.dtype.itemsize <= 4 else 8
    rows = np.empty((n, 1 + width), dtype=np.uint8)
    rows[:, 1:] = values.astype(f">u{width}").view(np.uint8).reshape(n, width)
    size_class = np.zeros(n, dtype=np.uint8)
    for limit in _LIMITS[: 3 if width == 4 else 4]:
        size_class += values >= limit
    rows[:, 0] = np.where(size_class == 0, rows[:, width], _HEADERS.take(size_class))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(_SIZES.take(size_class), out=offsets[1:])
    # take(), not fancy indexing: 5x faster for a row gather
    return rows[_kept_bytes(width).take(size_class, axis=0)].tobytes(), offsets


@functools.cache
def _kept_bytes(width: int) -> np.ndarray:
    """For each size class, which bytes of a (header, big-endian value) row its encoding keeps:
    the header and the value's last size - 1 bytes."""
    columns = np.arange(1 + width)
    kept = columns >= 2 + width - _SIZES[:, None]
    kept[:, 0] = True
    return kept


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
    to RUN_BLOCKS blocks per block size. The keys are a read-only uint64 array, not Python ints: the
    index looks them up as an array (no conversion per run), and an array is outside the garbage
    collector's view, so the memo's ~10^5 runs are not walked by every full collection (a list's
    are)."""

    __slots__ = ("new", "old")

    def __init__(self) -> None:
        self.new: dict[bytes, tuple[bytes, np.ndarray]] = {}
        self.old: dict[bytes, tuple[bytes, np.ndarray]] = {}

    def get(self, key: bytes) -> tuple[bytes, np.ndarray] | None:
        hit = self.new.get(key)
        if hit is None:
            hit = self.old.get(key)
            if hit is not None:
                self.put(key, hit)
        return hit

    def put(self, key: bytes, value: tuple[bytes, np.ndarray]) -> None:
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
        runs = list(self.runs(tokens, block_size, cache_salt))
        return np.concatenate(runs).tolist() if runs else []

    def runs(self, tokens: np.ndarray, block_size: int, cache_salt: str = "") -> Iterator[np.ndarray]:
        """The same keys in runs of up to RUN_BLOCKS blocks (uint64[<= RUN_BLOCKS] each, read-only),
        each run computed only when asked for: routing stops at the first block no candidate holds,
        so an uncached tail is not hashed. A run seen before (the prefix of an earlier turn) costs
        one memo lookup. Runs not memoised are CBOR-encoded several at a time, twice as many at each
        encoding: one numpy encoding per run cost more than hashing its blocks."""
        n_blocks = len(tokens) // block_size
        memo = self._memos.setdefault(block_size, _Memo())
        tokens = np.ascontiguousarray(tokens[: n_blocks * block_size], dtype=np.uint32)
        raw = tokens.tobytes()
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
                    encoded, offsets = cbor_uints(tokens[start * block_size : encoded_to * block_size])
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
) -> tuple[bytes, np.ndarray]:
    """Chains the blocks whose CBOR token arrays are `head` + encoded[bounds[j]:bounds[j + 1]] onto
    `parent`; `cache_salt` (block 0 of a salted request only) goes into the first block."""
    digests = []
    sha256, prefix, end = hashlib.sha256, _TRIPLE_AND_PARENT, _NULL
    start = 0
    if cache_salt:
        parent = sha256(prefix + parent + head + encoded[bounds[0] : bounds[1]] + _salt_keys(cache_salt)).digest()
        digests.append(parent)
        start = 1
    for j in range(start, len(bounds) - 1):
        parent = sha256(prefix + parent + head + encoded[bounds[j] : bounds[j + 1]] + end).digest()
        digests.append(parent)
    keys = np.frombuffer(b"".join(digests), dtype=">u8")[3::4].astype(np.uint64)
    keys.flags.writeable = False  # memoised: shared by every prompt with this run
    return parent, keys


class PromptHashes:
    """A prompt's block hashes, in runs, shared by several readers: each run is computed once,
    and only when the furthest reader gets to it."""

    def __init__(self, runs: Iterator[np.ndarray]) -> None:
        self._pending = runs
        self._known: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        known, i = self._known, 0
        while True:
            while i < len(known):  # including what other readers added meanwhile
                yield known[i]
                i += 1
            run = next(self._pending, None)
            if run is None:
                return
            known.append(run)

    def computed(self, start: int = 0) -> list[int]:
        """The hashes some reader has asked for so far from block `start` on, without computing
        more."""
        return np.concatenate(self._known)[start:].tolist() if self._known else []
