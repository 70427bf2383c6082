"""Where the router believes each worker holds the prompt's prefix: the one thing that differs
between the precise and the approximate policy (their scorers are the same).

- EngineEvents (precise): the KV index, fed by every engine's own KV-cache events, plus the
  blocks of prompts just routed that the engines have not reported yet (index.py says why).
- RoutingHistory (approximate, a baseline): no events, only the router's memory of where it sent
  each prompt, as llm-d's approximate prefix-cache scorer and Ray Serve's PrefixCacheAffinityRouter
  do. The prompt is cut into chunks of `chunk_tokens` (llm-d cuts characters; the ingress hands the
  router tokens), chained so a chunk stands for its whole prefix, and each worker keeps the chunks
  last sent to it in an LRU of `capacity_chunks`: a guess at the engine's cache that drifts from it
  as engines evict, restart, cache replies, or take traffic from other router replicas.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from glmserve.router.config import ApproximateConfig
from glmserve.router.index import KVIndex
from glmserve.router.workers import Group, Worker

if TYPE_CHECKING:
    from glmserve.router.plugins.base import RouteContext


class EngineEvents:
    def __init__(self, index: KVIndex, expect_s: float) -> None:
        self._index = index
        self._expect_s = expect_s
        self._masks: dict[tuple[int, str, str], list[tuple[int, int]]] = {}  # group key -> (block size, mask)
        # The last decision's walks of the prompt over whole pools: (ctx, [(block size, ends)]).
        self._walks: tuple[RouteContext | None, list[tuple[int, list[tuple[int, int]]]]] = (None, [])

    def cached_tokens(self, ctx: RouteContext, workers: list[Worker]) -> dict[str, int]:
        self._index.expire(ctx.now)
        by_block_size: dict[int, list[str]] = {}
        for w in workers:
            by_block_size.setdefault(w.info.block_size, []).append(w.worker_id)
        walks = self._walks[1] if self._walks[0] is ctx else []
        cached: dict[str, int] = {}
        for block_size, ids in by_block_size.items():
            blocks: dict[str, int] = {}
            for size, ends in walks:  # the pool's walk covers the candidates holders() pruned to
                if size == block_size:
                    blocks.update(self._index.blocks_of(ends, ids))
            if len(blocks) < len(ids):
                blocks.update(
                    self._index.prefix_blocks(ctx.block_hashes(block_size), [w for w in ids if w not in blocks])
                )
            cached.update((w, n * block_size) for w, n in blocks.items())
        return cached

    def holders(self, ctx: RouteContext, group: Group, limit: int) -> dict[str, int]:
        self._index.expire(ctx.now)
        masks = self._masks.get(group.key)
        if masks is None:
            if any(key[0] != group.key[0] for key in self._masks):  # workers changed: slots may have
                self._masks.clear()
            by_block_size: dict[int, list[str]] = {}
            for w in group.workers:
                by_block_size.setdefault(w.info.block_size, []).append(w.worker_id)
            masks = [(size, self._index.mask(ids)) for size, ids in by_block_size.items()]
            self._masks[group.key] = masks
        if self._walks[0] is not ctx:
            self._walks = (ctx, [])
        cached: dict[str, int] = {}
        for block_size, mask in masks:
            ends = self._index.walk(ctx.block_hashes(block_size), mask)
            self._walks[1].append((block_size, ends))
            blocks = self._index.longest_of(ends, limit)
            cached.update((w, n * block_size) for w, n in blocks.items())
        return cached

    def routed(self, ctx: RouteContext, worker: Worker) -> None:
        """Until the engine's events say what it cached, expect it to cache the prompt's blocks:
        those matching hashed (up to a run past the first block no worker held), not all of them.
        Hashing the whole prompt here doubled the decision time of an 8K-token prompt, and the
        prefix a concurrent request shares only has to outscore workers that hold none of it;
        each request that follows extends the expectation by a run."""
        if not self._expect_s:
            return
        held = ctx.cached_tokens([worker])[0] // worker.info.block_size  # already held or expected
        hashes = ctx.block_hashes(worker.info.block_size).computed(held)
        self._index.expect(worker.worker_id, hashes, ctx.now + self._expect_s)


_NOTHING: OrderedDict[bytes, None] = OrderedDict()


class RoutingHistory:
    def __init__(self, cfg: ApproximateConfig) -> None:
        self._chunk_tokens = cfg.chunk_tokens
        self._capacity = cfg.capacity_chunks
        self._seen: dict[str, OrderedDict[bytes, None]] = {}
        self._last: tuple[str, list[bytes]] = ("", [])

    def _chunks(self, ctx: RouteContext) -> list[bytes]:
        q = ctx.query
        if self._last[0] != q.request_id:
            raw = np.ascontiguousarray(q.tokens, dtype=np.uint32).tobytes()
            step = 4 * self._chunk_tokens
            digest = hashlib.blake2b(q.cache_salt.encode(), digest_size=8).digest()
            chunks = []
            for start in range(0, len(raw) - step + 1, step):
                digest = hashlib.blake2b(digest + raw[start : start + step], digest_size=8).digest()
                chunks.append(digest)
            self._last = (q.request_id, chunks)
        return self._last[1]

    def cached_tokens(self, ctx: RouteContext, workers: list[Worker]) -> dict[str, int]:
        chunks = self._chunks(ctx)
        cached = {}
        for w in workers:
            seen = self._seen.get(w.worker_id, _NOTHING)
            matched = 0
            for chunk in chunks:
                if chunk not in seen:
                    break
                matched += 1
            cached[w.worker_id] = matched * self._chunk_tokens
        return cached

    def holders(self, ctx: RouteContext, group: Group, limit: int) -> dict[str, int]:
        """A pass over the whole pool: this policy is a baseline, not sized for fleets."""
        cached = sorted(self.cached_tokens(ctx, group.workers).items(), key=lambda item: -item[1])
        cut = cached[min(limit, len(cached)) - 1][1] if cached else 0
        return {w: tokens for w, tokens in cached if tokens and tokens >= cut}

    def routed(self, ctx: RouteContext, worker: Worker) -> None:
        seen = self._seen.setdefault(worker.worker_id, OrderedDict())
        for chunk in self._chunks(ctx):
            seen[chunk] = None
            seen.move_to_end(chunk)
        while len(seen) > self._capacity:
            seen.popitem(last=False)
        if len(self._seen) > len(ctx.registry.workers):  # forget departed workers
            for worker_id in [w for w in self._seen if w not in ctx.registry.workers]:
                del self._seen[worker_id]
