"""What every plugin sees: the request's context, with the prompt's block hashes and each
worker's cached prefix (from the policy's PrefixEstimate) computed once and shared by all plugins
of both profiles."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import compress
from typing import Protocol

import numpy as np

from glmserve.router.config import RouterConfig
from glmserve.router.hashing import BlockHasher, PromptHashes
from glmserve.router.types import Role, RouteQuery
from glmserve.router.workers import Group, Registry, Worker


class PrefixEstimate(Protocol):
    def cached_tokens(self, ctx: RouteContext, workers: list[Worker]) -> dict[str, int]:
        """Prompt tokens each worker is believed to hold as a cached prefix."""
        ...

    def holders(self, ctx: RouteContext, group: Group, limit: int) -> dict[str, int]:
        """The workers of `group` believed to hold the longest prefixes of the prompt (at least
        `limit` of them where as many hold any), with their cached tokens."""
        ...

    def routed(self, ctx: RouteContext, worker: Worker) -> None:
        """Told that the worker will prefill the request (history-based estimates learn from it)."""
        ...


@dataclass(slots=True)
class RouteContext:
    query: RouteQuery
    now: float
    config: RouterConfig
    registry: Registry
    hasher: BlockHasher
    estimate: PrefixEstimate
    _hashes: dict[int, PromptHashes] = field(default_factory=dict)
    _cached: dict[str, int] = field(default_factory=dict)
    _rng: random.Random | None = None
    _slots: tuple[list[Worker], np.ndarray] | None = None  # the last list `slots` was asked for
    _cached_of: tuple[list[Worker], np.ndarray] | None = None  # the last list `cached_array` was asked for

    @property
    def rng(self) -> random.Random:
        """Seeded by (seed, request id): every router replica breaks the same tie the same way."""
        if self._rng is None:
            self._rng = random.Random(f"{self.config.seed}:{self.query.request_id}")
        return self._rng

    def block_hashes(self, block_size: int) -> PromptHashes:
        """The prompt's block hashes at `block_size`, computed as far as they are read."""
        hashes = self._hashes.get(block_size)
        if hashes is None:
            q = self.query
            hashes = PromptHashes(self.hasher.runs(q.tokens, block_size, q.cache_salt))
            self._hashes[block_size] = hashes
        return hashes

    def prompt_blocks(self, worker: Worker) -> int:
        return len(self.query.tokens) // worker.info.block_size

    def cached_tokens(self, workers: list[Worker]) -> list[int]:
        """Prompt tokens each worker holds as a cached prefix, by the policy's estimate."""
        missing = [w for w in workers if w.worker_id not in self._cached]
        if missing:
            self._cached.update(self.estimate.cached_tokens(self, missing))
        return [self._cached[w.worker_id] for w in workers]

    def cached_array(self, workers: list[Worker]) -> np.ndarray:
        """`cached_tokens` as float64[len(workers)], read-only: the prefix scorers ask for the same
        list (the filters' survivors), so it is made once."""
        if self._cached_of is None or self._cached_of[0] is not workers:
            cached = np.array(self.cached_tokens(workers), dtype=np.float64)
            cached.flags.writeable = False
            self._cached_of = (workers, cached)
        return self._cached_of[1]

    def prefix_holders(self, group: Group, limit: int) -> list[str]:
        """The ids of the workers of `group` holding the longest prefixes of the prompt (see
        PrefixEstimate.holders); what they hold is remembered for the scorers."""
        holders = self.estimate.holders(self, group, limit)
        self._cached.update(holders)
        return list(holders)

    def slots(self, workers: list[Worker]) -> np.ndarray:
        """The workers' rows in the registry's board, to read their load figures as arrays. Every
        scorer asks for the same list (the filters' survivors): it is made once."""
        if self._slots is None or self._slots[0] is not workers:
            self._slots = (workers, np.fromiter((w.slot for w in workers), dtype=np.intp, count=len(workers)))
        return self._slots[1]

    def placed(self, workers: list[Worker], slots: np.ndarray) -> list[Worker]:
        """`workers`, whose board slots (intp[len(workers)]) the caller already has: `slots` will
        not make them again."""
        self._slots = (workers, slots)
        return workers

    def keep(self, workers: list[Worker], kept: np.ndarray) -> list[Worker]:
        """The workers where `kept` (bool[len(workers)], over `slots(workers)`) is true: `workers`
        itself when it is true for all (the usual filter outcome), so what the scorers' reads of
        that list made is kept; else a new list whose slots come from the mask, not another pass."""
        if kept.all():
            return workers
        survivors = list(compress(workers, kept.tolist()))
        self._slots = (survivors, self.slots(workers)[kept])
        return survivors


class Filter(Protocol):
    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> list[Worker]: ...


class Scorer(Protocol):
    def __call__(self, ctx: RouteContext, workers: list[Worker]) -> np.ndarray:
        """One score in [0, 1] per worker, higher is better."""
        ...


class Picker(Protocol):
    def __call__(self, ctx: RouteContext, workers: list[Worker], scores: np.ndarray) -> int:
        """The index of the chosen worker; `workers` is never empty."""
        ...


@dataclass(frozen=True, slots=True)
class PluginArgs:
    """What a plugin factory gets: the whole config and the pool its profile routes to."""

    config: RouterConfig
    role: Role
