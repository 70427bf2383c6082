"""Which router shard owns a tenant or an engine, when one router process is not enough.

Each shard is a set of router replicas (config `shard: {count, index}`) that indexes and routes to
its own part of the engines and serves its own part of the tenants; the ingress sends each tenant's
requests to its shard (replicas.RouterShards). Requests are salted per tenant, so a tenant's
prefixes are never cached for another and nothing is lost by keeping the two apart. Rendezvous
hashing: every key has an order of preference over the shards, and changing the shard count moves
only the keys whose first choice appeared or went away. docs/router-sizing.md sizes the shards.
"""

from __future__ import annotations

import hashlib


def shard_order(key: str, count: int) -> list[int]:
    """The shards 0..count-1 in `key`'s order of preference: its owner first."""
    weights = [hashlib.blake2b(f"{shard}\0{key}".encode(), digest_size=8).digest() for shard in range(count)]
    return sorted(range(count), key=weights.__getitem__, reverse=True)


def shard_of(key: str, count: int) -> int:
    return shard_order(key, count)[0] if count > 1 else 0
