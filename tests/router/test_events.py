"""Decoding of vLLM-format KV event batches (the encoder mirrors vLLM's msgspec output; the real
engine's bytes are decoded in test_vllm_parity.py)."""

from __future__ import annotations

import msgpack
import pytest

from benchmarks.sim.vllm_events import all_blocks_cleared, block_removed, block_stored, encode_batch
from glmserve.router.events import AllBlocksCleared, BlockRemoved, BlockStored, MalformedBatch, decode_batch

SEQ = (7).to_bytes(8, "big")


def test_decodes_each_event_type() -> None:
    payload = encode_batch(
        12.5, [block_stored([1, 2], list(range(32)), 16, cache_salt="s"), block_removed([2]), all_blocks_cleared()]
    )
    batch = decode_batch(SEQ, payload)
    assert (batch.seq, batch.ts) == (7, 12.5)
    assert batch.events == (BlockStored((1, 2), 16), BlockRemoved((2,)), AllBlocksCleared())


def test_full_byte_hashes_become_their_low_64_bits() -> None:
    # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 publishes the 32-byte digests.
    digest = bytes(range(32))
    event = block_stored([0], [], 16) | {"block_hashes": [digest]}
    (stored,) = decode_batch(SEQ, encode_batch(0.0, [event])).events
    assert stored == BlockStored((int.from_bytes(digest[-8:], "big"),), 16)


def test_offloaded_tiers_and_other_groups_are_not_indexed() -> None:
    cpu = block_stored([1], [], 16) | {"medium": "CPU"}
    group1 = block_removed([1]) | {"group_idx": 1}
    future = {"type": "BlockMoved", "block_hashes": [1]}
    assert decode_batch(SEQ, encode_batch(0.0, [cpu, group1, future])).events == ()


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", msgpack.packb([1.0]), msgpack.packb([1.0, [{"type": "BlockStored"}]]), msgpack.packb("x")],
)
def test_malformed_payloads_raise(payload: bytes) -> None:
    with pytest.raises(MalformedBatch):
        decode_batch(SEQ, payload)


def test_short_sequence_number_is_malformed() -> None:
    with pytest.raises(MalformedBatch):
        decode_batch(b"\x00", encode_batch(0.0, []))
