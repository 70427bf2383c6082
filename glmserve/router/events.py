"""vLLM's KV-cache event batches (vllm/distributed/kv_events.py), decoded without vLLM.

The engine's ZMQ publisher sends multipart (topic, seq: 8-byte big-endian, payload), where the
payload is msgspec msgpack of `[ts, events, data_parallel_rank]` and each event is a map tagged
`type` = BlockStored | BlockRemoved | AllBlocksCleared. Only device-tier blocks of KV-cache group 0
are indexed: offloaded tiers (medium CPU/STORAGE) are not prefix hits the scheduler sees without a
connector, and GLM-4.6 has a single full-attention group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from glmserve.router.hashing import to_index_hash

_INDEXED_MEDIA = (None, "GPU")
_INDEXED_GROUPS = (None, 0)


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    block_size: int


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    seq: int
    ts: float
    events: tuple[Event, ...]


class MalformedBatch(ValueError):
    pass


def decode_seq(seq: bytes) -> int:
    """The 8-byte big-endian sequence number; the replay end marker is -1."""
    if len(seq) != 8:
        raise MalformedBatch(f"sequence number has {len(seq)} bytes, not 8")
    return int.from_bytes(seq, "big", signed=True)


def decode_batch(seq: bytes, payload: bytes) -> EventBatch:
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        ts, events = float(raw[0]), raw[1]
        decoded = tuple(e for e in map(_event, events) if e is not None)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise MalformedBatch(f"undecodable KV event batch: {exc}") from exc
    return EventBatch(decode_seq(seq), ts, decoded)


def _event(raw: dict[str, Any]) -> Event | None:
    kind = raw["type"]
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    if raw.get("medium") not in _INDEXED_MEDIA or raw.get("group_idx") not in _INDEXED_GROUPS:
        return None
    hashes = tuple(map(to_index_hash, raw["block_hashes"]))
    if kind == "BlockStored":
        return BlockStored(hashes, int(raw["block_size"]))
    if kind == "BlockRemoved":
        return BlockRemoved(hashes)
    return None  # an event type newer than this decoder: not one that changes prefix hits
