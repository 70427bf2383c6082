"""KV-cache event batches byte-compatible with vLLM's (vllm/distributed/kv_events.py, 0.32).

vLLM encodes `KVEventBatch` with msgspec: the batch as an array [ts, events, dp_rank] and each
event as a map tagged "type", omitting fields left at their defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack


def block_stored(
    block_hashes: Sequence[int],
    token_ids: Sequence[int],
    block_size: int,
    parent_block_hash: int | None = None,
    cache_salt: str = "",
) -> dict[str, Any]:
    """One BlockStored for consecutive full blocks (their tokens concatenated), as the scheduler
    emits when a request's blocks fill."""
    event: dict[str, Any] = {
        "type": "BlockStored",
        "block_hashes": list(block_hashes),
        "parent_block_hash": parent_block_hash,
        "token_ids": list(token_ids),
        "block_size": block_size,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
    }
    if cache_salt and parent_block_hash is None:
        event["extra_keys"] = [[cache_salt]] + [None] * (len(block_hashes) - 1)
    event |= {"group_idx": 0, "kv_cache_spec_kind": "full_attention"}
    return event


def block_removed(block_hashes: Sequence[int]) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": list(block_hashes), "medium": "GPU", "group_idx": 0}


def all_blocks_cleared() -> dict[str, Any]:
    return {"type": "AllBlocksCleared"}


def encode_batch(ts: float, events: Sequence[dict[str, Any]], data_parallel_rank: int = 0) -> bytes:
    return msgpack.packb([ts, list(events), data_parallel_rank])
