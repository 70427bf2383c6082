"""The approximate prefix scorer (a baseline): no KV events, only the router's memory of where it
sent each prompt, as llm-d's approximate prefix-cache scorer and Ray Serve's
PrefixCacheAffinityRouter do. The prompt is cut into chunks of `chunk_tokens` (llm-d cuts
characters; the ingress hands the router tokens), chained so a chunk stands for its whole prefix,
and each worker keeps the chunks last sent to it in an LRU of `capacity_chunks`: a guess at the
engine's cache that drifts from it as engines evict, restart or get traffic from other routers."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from glmserve.router.plugins.base import PluginArgs, RouteContext
from glmserve.router.workers import Worker

_NOTHING: OrderedDict[bytes, None] = OrderedDict()


class ApproxPrefix:
    def __init__(self, args: PluginArgs) -> None:
        self._chunk_tokens = args.config.approximate.chunk_tokens
        self._capacity = args.config.approximate.capacity_chunks
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

    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[float]:
        chunks = self._chunks(ctx)
        if not chunks:
            return [0.0] * len(workers)
        scores = []
        for w in workers:
            seen = self._seen.get(w.worker_id, _NOTHING)
            matched = 0
            for chunk in chunks:
                if chunk not in seen:
                    break
                matched += 1
            scores.append(matched / len(chunks))
        return scores

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
