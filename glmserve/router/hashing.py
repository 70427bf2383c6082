"""Prompt block hashes, computed exactly as vLLM's prefix cache computes them.

vLLM (`prefix_caching_hash_algo="sha256_cbor"`) hashes each full block of `block_size` tokens as
    sha256(canonical CBOR of [parent_hash, token_ids, extra_keys])
chained from a root `sha256(cbor(seed))`, where the seed is `PYTHONHASHSEED` when the engine has it
set and "vllm-none-hash" otherwise, and `extra_keys` is `[["cache_salt", salt]]` on block 0 of a
salted request and null elsewhere (no LoRA, no multimodal input). KV events carry the low 64 bits
of each hash as an unsigned int, which is what the index keys on.

An 8K-token prompt is 512 blocks at block size 16: per-block `cbor2.dumps` costs ~1.4 ms, so the
token arrays are CBOR-encoded many blocks at a time with numpy, blocks already hashed for an earlier
request (agentic prompts repeat their prefix) come from a memo, and hashes are computed lazily.
"""

from __future__ import annotations

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
_MEMO_GENERATION = 1 << 17
_ENCODE_BLOCKS = 64  # CBOR-encode this many blocks at a time: vectorised, yet lazy


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


def _array_header(length: int) -> bytes:
    """CBOR's header of an array of `length` (>= 1) items."""
    return cbor2.dumps([None] * length)[:-length]


def _salt_keys(cache_salt: str) -> bytes:
    return cbor2.dumps([["cache_salt", cache_salt]], canonical=True)


class _Memo:
    """(parent hash + raw block tokens [+ salt]) -> (hash, index key), in two generations so the
    recently used half survives each reset; memory stays under ~2 x 2^17 entries per block size."""

    __slots__ = ("new", "old")

    def __init__(self) -> None:
        self.new: dict[bytes, tuple[bytes, int]] = {}
        self.old: dict[bytes, tuple[bytes, int]] = {}

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        hit = self.new.get(key)
        if hit is None:
            hit = self.old.get(key)
            if hit is not None:
                self.put(key, hit)
        return hit

    def put(self, key: bytes, value: tuple[bytes, int]) -> None:
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
        return list(self.iter_block_hashes(tokens, block_size, cache_salt))

    def iter_block_hashes(self, tokens: np.ndarray, block_size: int, cache_salt: str = "") -> Iterator[int]:
        """The same keys, each computed only when asked for: routing stops reading at the first
        block no candidate holds, so an uncached tail is never hashed."""
        n_blocks = len(tokens) // block_size
        memo = self._memos.setdefault(block_size, _Memo())
        raw = np.ascontiguousarray(tokens[: n_blocks * block_size], dtype=np.uint32).tobytes()
        step = 4 * block_size
        salt = cache_salt.encode()
        head = _array_header(block_size)
        parent = self.root
        encoded, bounds, first = b"", [0], 0  # CBOR of blocks first.., encoded on a memo miss
        for i in range(n_blocks):
            memo_key = parent + raw[i * step : (i + 1) * step] + (salt if i == 0 else b"")
            hit = memo.new.get(memo_key) or memo.get(memo_key)
            if hit is None:
                if i - first + 1 >= len(bounds):
                    first, last = i, min(n_blocks, i + _ENCODE_BLOCKS)
                    encoded, offsets = cbor_uints(np.asarray(tokens[i * block_size : last * block_size], np.uint64))
                    bounds = offsets[::block_size].tolist()
                j = i - first
                tail = _salt_keys(cache_salt) if i == 0 and cache_salt else _NULL
                digest = hashlib.sha256(
                    _TRIPLE_AND_PARENT + parent + head + encoded[bounds[j] : bounds[j + 1]] + tail
                ).digest()
                hit = (digest, int.from_bytes(digest[-8:], "big"))
                memo.put(memo_key, hit)
            parent = hit[0]
            yield hit[1]


class PromptHashes:
    """A prompt's block hashes as a sequence shared by several readers: computed once, and only
    as far as the furthest reader went."""

    def __init__(self, hashes: Iterator[int]) -> None:
        self._pending = hashes
        self._known: list[int] = []

    def __iter__(self) -> Iterator[int]:
        known, i = self._known, 0
        while True:
            while i < len(known):  # including what other readers added meanwhile
                yield known[i]
                i += 1
            block_hash = next(self._pending, None)
            if block_hash is None:
                return
            known.append(block_hash)
