"""A simulated vLLM engine: one prefill lane (prefill is compute-bound, so concurrent prefills
share one throughput; FIFO models that), decode alongside it, and a prefix cache whose changes are
published as vLLM-format KV event batches.

TTFT = time queued for the lane + prefill_base_s + uncached prompt tokens x prefill_s_per_token.
The prefix hit is taken when the prefill starts, from the cache as it is then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.sim.cache import BlockCache
from benchmarks.sim.loop import EventLoop
from benchmarks.sim.vllm_events import block_removed, block_stored, encode_batch
from glmserve.router.hashing import BlockHasher


@dataclass(frozen=True, slots=True)
class EngineModel:
    """Defaults: one GLM-4.6 replica (8 x H100, TP8, FP8) at the order of magnitude of its prefill
    throughput and decode speed; KV cache scaled down with the workload."""

    block_size: int = 16
    cache_blocks: int = 12_000
    prefill_s_per_token: float = 1 / 15_000
    prefill_base_s: float = 0.015
    itl_s: float = 0.025
    max_running: int = 64


@dataclass(slots=True)
class Job:
    request_id: str
    arrival_s: float
    prompt: np.ndarray
    cache_salt: str
    output: np.ndarray
    on_first_token: Callable[[Job, float, int], None]  # (job, ttft_s, cached_tokens), at the first token
    on_done: Callable[[Job], None]


Publish = Callable[[str, bytes], None]  # (worker id, msgpack batch)


class SimEngine:
    def __init__(self, worker_id: str, model: EngineModel, hasher: BlockHasher, loop: EventLoop, publish: Publish):
        self.worker_id = worker_id
        self.model = model
        self.cache = BlockCache(model.cache_blocks)
        self._hasher = hasher
        self._loop = loop
        self._publish = publish
        self._queue: deque[Job] = deque()
        self._prefilling: Job | None = None
        self.decoding = 0
        self.busy_s = 0.0
        self._held_tokens = 0  # KV of the requests running now; the rest of the cache is evictable

    @property
    def kv_cache_usage(self) -> float:
        """As vLLM reports it: blocks held by running requests over all blocks (cached blocks no
        running request holds are free to evict, so they do not count)."""
        return min(1.0, self._held_tokens / self.model.block_size / self.model.cache_blocks)

    @property
    def running(self) -> int:
        return self.decoding + (self._prefilling is not None)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> None:
        self._queue.append(job)
        if self._prefilling is None:
            self._start_prefill()

    def _hashes(self, job: Job, tokens: np.ndarray) -> list[int]:
        return self._hasher.block_hashes(tokens, self.model.block_size, job.cache_salt)

    def _start_prefill(self) -> None:
        job = self._queue.popleft()
        self._prefilling = job
        self._held_tokens += len(job.prompt) + len(job.output)
        m = self.model
        hashes = self._hashes(job, job.prompt)
        cached = self.cache.cached_prefix(hashes) * m.block_size
        cached = min(cached, len(job.prompt) - 1)  # vLLM always computes the last prompt token
        duration = m.prefill_base_s + (len(job.prompt) - cached) * m.prefill_s_per_token
        self.busy_s += duration
        self._loop.after(duration, lambda: self._prefill_done(job, hashes, cached))

    def _prefill_done(self, job: Job, hashes: list[int], cached: int) -> None:
        job.on_first_token(job, self._loop.now - job.arrival_s, cached)
        self._cache(job, job.prompt, hashes)
        self._prefilling = None
        self.decoding += 1
        self._loop.after(len(job.output) * self.model.itl_s, lambda: self._decode_done(job))
        if self._queue:
            self._start_prefill()

    def _decode_done(self, job: Job) -> None:
        tokens = np.concatenate([job.prompt, job.output])
        self._cache(job, tokens, self._hashes(job, tokens))  # the reply's full blocks are cached too
        self.decoding -= 1
        self._held_tokens -= len(job.prompt) + len(job.output)
        job.on_done(job)

    def _cache(self, job: Job, tokens: np.ndarray, hashes: list[int]) -> None:
        stored, evicted = self.cache.store(hashes)
        events = [self._stored_run(job, tokens, hashes, run) for run in _runs(hashes, set(stored))]
        if evicted:
            events.append(block_removed(evicted))
        if events:
            self._publish(self.worker_id, encode_batch(self._loop.now, events))

    def _stored_run(self, job: Job, tokens: np.ndarray, hashes: list[int], run: range) -> dict[str, Any]:
        """One BlockStored per run of consecutive new blocks, as vLLM's scheduler emits them."""
        bs = self.model.block_size
        parent = hashes[run.start - 1] if run.start else None
        run_tokens = tokens[run.start * bs : run.stop * bs].tolist()
        return block_stored(hashes[run.start : run.stop], run_tokens, bs, parent, job.cache_salt)


def _runs(hashes: list[int], new: set[int]) -> list[range]:
    runs: list[range] = []
    for i, h in enumerate(hashes):
        if h in new:
            if runs and runs[-1].stop == i:
                runs[-1] = range(runs[-1].start, i + 1)
            else:
                runs.append(range(i, i + 1))
    return runs
