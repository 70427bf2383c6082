"""The router's block hashes against a direct transcription of vLLM's sha256_cbor hashing
(vllm/v1/core/kv_cache_utils.py: hash_block_tokens + init_none_hash). Parity with a real engine's
own events is in test_vllm_parity.py."""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator

import cbor2
import numpy as np
import pytest

from glmserve.router.hashing import DEFAULT_SEED, BlockHasher, PromptHashes, cbor_uints, to_index_hash


def vllm_hashes(tokens: list[int], block_size: int, cache_salt: str = "", seed: str = DEFAULT_SEED) -> list[int]:
    def sha256_cbor(obj: object) -> bytes:
        return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()

    parent = sha256_cbor(seed)
    out = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        extra = (("cache_salt", cache_salt),) if start == 0 and cache_salt else None
        parent = sha256_cbor((parent, tuple(tokens[start : start + block_size]), extra))
        out.append(int.from_bytes(parent, "big") & (2**64 - 1))
    return out


# Every CBOR unsigned-int width: 0-23 inline, then 1, 2, 4 and 8 extra bytes.
EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]


def test_cbor_uints_match_cbor2_at_every_width() -> None:
    values = np.array(EDGES, dtype=np.uint64)
    encoded, offsets = cbor_uints(values)
    assert [encoded[offsets[i] : offsets[i + 1]] for i in range(len(EDGES))] == [cbor2.dumps(v) for v in EDGES]


@pytest.mark.parametrize("block_size", [1, 16, 23, 24, 128, 300])
@pytest.mark.parametrize("cache_salt", ["", "tenant-a"])
def test_block_hashes_equal_vllms(block_size: int, cache_salt: str) -> None:
    rng = np.random.default_rng(block_size)
    widths = rng.choice([24, 256, 65536, 2**32], size=1000)
    tokens = [int(rng.integers(0, w)) for w in widths]
    hasher = BlockHasher()
    expected = vllm_hashes(tokens, block_size, cache_salt)
    assert len(expected) == 1000 // block_size
    assert hasher.block_hashes(np.array(tokens, np.uint32), block_size, cache_salt) == expected
    # Again from the memo, and a prefix of it (the next turn of a conversation shares a prefix).
    assert hasher.block_hashes(np.array(tokens, np.uint32), block_size, cache_salt) == expected
    assert (
        hasher.block_hashes(np.array(tokens[:700], np.uint32), block_size, cache_salt) == expected[: 700 // block_size]
    )


def test_salt_and_seed_change_every_block() -> None:
    tokens = np.arange(64, dtype=np.uint32)
    plain = BlockHasher().block_hashes(tokens, 16)
    salted = BlockHasher().block_hashes(tokens, 16, "s")
    seeded = BlockHasher("0").block_hashes(tokens, 16)
    assert seeded == vllm_hashes(tokens.tolist(), 16, seed="0")
    for other in (salted, seeded):
        assert all(a != b for a, b in zip(plain, other, strict=True))


def test_memo_does_not_leak_across_salts_or_block_sizes() -> None:
    hasher = BlockHasher()
    tokens = np.arange(96, dtype=np.uint32)
    for salt in ("", "a", "b", ""):
        assert hasher.block_hashes(tokens, 16, salt) == vllm_hashes(tokens.tolist(), 16, salt)
    assert hasher.block_hashes(tokens, 32) == vllm_hashes(tokens.tolist(), 32)


def test_short_prompt_has_no_full_block() -> None:
    assert BlockHasher().block_hashes(np.arange(15, dtype=np.uint32), 16) == []


def test_index_hash_of_bytes_and_int_agree() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert to_index_hash(digest) == to_index_hash(int.from_bytes(digest, "big")) < 2**64


def test_prompt_hashes_are_shared_by_readers_and_computed_once() -> None:
    tokens = np.arange(16 * 40, dtype=np.uint32)  # 40 blocks: runs of 16, 16 and 8
    expected = vllm_hashes(tokens.tolist(), 16)
    computed: list[int] = []

    def counting() -> Iterator[np.ndarray]:
        for run in BlockHasher().runs(tokens, 16):
            computed.extend(run.tolist())
            yield run

    hashes = PromptHashes(counting())
    assert next(iter(hashes)).tolist() == expected[:16]
    assert len(computed) == 16  # one run, not the whole prompt
    first, second = iter(hashes), iter(hashes)  # interleaved readers see the same runs
    assert [h for a, b in zip(first, second, strict=True) if a is b for h in a.tolist()] == expected
    assert [h for run in hashes for h in run.tolist()] == expected
    assert len(computed) == 40  # each run hashed once for all readers


def test_memoised_runs_leave_the_collectors_view() -> None:
    """The router keeps ~10^5 memoised runs: a full collection must not walk them (its pause)."""
    runs = list(BlockHasher().runs(np.arange(16 * 40, dtype=np.uint32), 16))
    gc.collect()
    assert runs and not any(gc.is_tracked(run) for run in runs)
