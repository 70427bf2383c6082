"""One measurement of the router in this process, printed as one JSON line: run by __main__ in a
subprocess per point, with `glmserve` imported from either this tree or main's (today's code), so
each point's memory is its own and both implementations run the same script.

`sweep`: `engines` engines each holding `blocks` KV blocks (their tenant's 4K-token context, two
8K-token conversations on it, random filler blocks for the rest), ingested as vLLM event batches
through `decode_batch` and `Router.apply_events`; then Route + Complete of 8192-token prompts
(10% never seen, 90% turns of the engines' conversations), one at a time.

`fanin`: the same fleet at full cache, then every engine in turn sends a batch of one BlockStored
of `batch_blocks` new blocks and one BlockRemoved of its oldest as many (a full cache evicts what
it stores), for `seconds`: the replica's sustained entry updates per second.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import time
from collections import deque
from typing import Any

import numpy as np

from benchmarks.sim.vllm_events import block_removed, block_stored, encode_batch
from glmserve.router.config import RouterConfig
from glmserve.router.events import decode_batch
from glmserve.router.hashing import BlockHasher
from glmserve.router.router import Router
from glmserve.router.types import Load, RouteQuery, Usage, WorkerInfo

MODEL = "glm-4.6"
BLOCK = 16
TENANTS = 16
CONTEXT_TOKENS = 4096
PROMPT_TOKENS = 8192
SESSIONS = 2  # real conversations per engine (the rest of its cache is filler)
EVENT_BLOCKS = 256  # blocks per BlockStored while filling (a 4K-token prefill)
VOCAB = 151_552
_SEQ = b"\0" * 8
_TOKENS = list(range(EVENT_BLOCKS * BLOCK))  # filler blocks' token ids: decoded, never hashed


def _rss() -> int:
    """Resident memory, after handing freed heap back (decoding leaves transient garbage)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Fleet:
    def __init__(self, engines: int, blocks: int, seed: int) -> None:
        self.engines, self.blocks = engines, blocks
        self.rng = np.random.default_rng(seed)
        self.hasher = BlockHasher()
        self.contexts = [self.rng.integers(0, VOCAB, CONTEXT_TOKENS, dtype=np.uint32) for _ in range(TENANTS)]
        self.sessions = [
            [
                np.concatenate([self.contexts[e % TENANTS], self.rng.integers(0, VOCAB, 4096, dtype=np.uint32)])
                for _ in range(SESSIONS)
            ]
            for e in range(engines)
        ]
        self.router = Router(
            RouterConfig.model_validate(
                {"workers": {"heartbeat_interval_s": 60, "lease_s": 3600, "forget_after_s": 7200}}
            )
        )
        for e in range(engines):
            info = WorkerInfo(
                self.worker(e), "decode", MODEL, block_size=BLOCK, max_running_requests=1 << 20, kv_cache_blocks=blocks
            )
            self.router.register(info, Load())

    @staticmethod
    def worker(e: int) -> str:
        return f"w{e:05d}"

    def cache(self, e: int) -> tuple[list[bytes], np.ndarray]:
        """The engine's event batches (encoded) and its filler hashes, oldest first."""
        context = self.contexts[e % TENANTS]
        ctx_hashes = self.hasher.block_hashes(context, BLOCK)
        batches = [encode_batch(0.0, [block_stored(ctx_hashes, context.tolist(), BLOCK)])]
        for session in self.sessions[e]:
            hashes = self.hasher.block_hashes(session, BLOCK)[len(ctx_hashes) :]
            tokens = session[CONTEXT_TOKENS:].tolist()
            batches.append(encode_batch(0.0, [block_stored(hashes, tokens, BLOCK, ctx_hashes[-1])]))
        filler = self.rng.integers(2, 1 << 64, max(0, self.blocks - len(ctx_hashes) * (1 + SESSIONS)), np.uint64)
        for start in range(0, len(filler), EVENT_BLOCKS):
            hashes = filler[start : start + EVENT_BLOCKS].tolist()
            batches.append(encode_batch(0.0, [block_stored(hashes, _TOKENS[: len(hashes) * BLOCK], BLOCK)]))
        return batches, filler

    def ingest(self, e: int, batches: list[bytes]) -> tuple[float, float]:
        """Seconds to decode and apply the batches, and the longest batch (a table growth)."""
        worker, total, longest = self.worker(e), 0.0, 0.0
        for payload in batches:
            started = time.perf_counter()
            self.router.apply_events(worker, decode_batch(_SEQ, payload).events)
            took = time.perf_counter() - started
            total, longest = total + took, max(longest, took)
        return total, longest

    def prompts(self, n: int) -> list[np.ndarray]:
        out = []
        for _ in range(n):
            if self.rng.random() < 0.1:
                out.append(self.rng.integers(0, VOCAB, PROMPT_TOKENS, dtype=np.uint32))
                continue
            session = self.sessions[int(self.rng.integers(self.engines))][int(self.rng.integers(SESSIONS))]
            cached = PROMPT_TOKENS - 1024 + 96 * int(self.rng.integers(10))
            fresh = self.rng.integers(0, VOCAB, PROMPT_TOKENS - cached, dtype=np.uint32)
            out.append(np.concatenate([session[:cached], fresh]))
        return out


def sweep(engines: int, blocks: int, decisions: int, seed: int) -> dict[str, Any]:
    fleet = Fleet(engines, blocks, seed)
    prompts = fleet.prompts(decisions)
    before = _rss()
    ingest_s = longest_batch_s = 0.0
    for e in range(engines):
        batches, _ = fleet.cache(e)
        took, longest = fleet.ingest(e, batches)
        ingest_s, longest_batch_s = ingest_s + took, max(longest_batch_s, longest)
    router = fleet.router
    entries = router.index.size()
    memory = _rss() - before
    peak = _peak() - before
    route_s, total_s, longest = [], 0.0, 0
    everyone = [fleet.worker(e) for e in range(engines)]
    for i, prompt in enumerate(prompts):
        query = RouteQuery(f"r{i}", "t", MODEL, prompt)
        best = max(router.index.prefix_blocks(fleet.hasher.runs(prompt, BLOCK), everyone).values()) * BLOCK
        started = time.perf_counter()
        decision = router.route(query)
        routed = time.perf_counter()
        router.complete(query.request_id, "finished", Usage())
        total_s += time.perf_counter() - started
        route_s.append(routed - started)
        longest += decision.expected_cached_tokens >= best
    timings = np.array(route_s) * 1e3
    return {
        "engines": engines,
        "blocks_per_engine": blocks,
        "entries": entries,
        "memory_bytes": memory,
        "peak_memory_bytes": peak,
        "bytes_per_entry": memory / entries,
        "ingest_entries_per_s": entries / ingest_s,
        "longest_batch_ms": longest_batch_s * 1e3,
        "decision_p50_ms": float(np.percentile(timings, 50)),
        "decision_p99_ms": float(np.percentile(timings, 99)),
        "decisions_per_s": decisions / total_s,
        "longest_prefix_share": longest / decisions,
        "decisions": decisions,
    }


def fanin(engines: int, blocks: int, batch_blocks: int, seconds: float, seed: int) -> dict[str, Any]:
    fleet = Fleet(engines, blocks, seed)
    held: list[deque[np.ndarray]] = []
    for e in range(engines):
        batches, filler = fleet.cache(e)
        fleet.ingest(e, batches)
        chunks = len(filler) // batch_blocks
        held.append(deque(filler[: chunks * batch_blocks].reshape(chunks, batch_blocks)))
    tokens = _TOKENS[: batch_blocks * BLOCK]
    updates, busy, rounds = 0, 0.0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        payloads = []
        for e in range(engines):  # one round: every engine's next batch, encoded outside the timing
            new = fleet.rng.integers(2, 1 << 64, batch_blocks, np.uint64)
            old = held[e].popleft()
            held[e].append(new)
            events = [block_stored(new.tolist(), tokens, BLOCK), block_removed(old.tolist())]
            payloads.append((fleet.worker(e), encode_batch(0.0, events)))
            updates += batch_blocks + len(old)
        started = time.perf_counter()
        for worker, payload in payloads:
            fleet.router.apply_events(worker, decode_batch(_SEQ, payload).events)
        busy += time.perf_counter() - started
        rounds += 1
    return {
        "engines": engines,
        "blocks_per_engine": blocks,
        "entries": fleet.router.index.size(),
        "batch_blocks": batch_blocks,
        "batches": rounds * engines,
        "entry_updates_per_s": updates / busy,
        "batches_per_s": rounds * engines / busy,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sweep", "fanin"])
    parser.add_argument("--engines", type=int, required=True)
    parser.add_argument("--blocks", type=int, required=True)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--batch-blocks", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    if a.mode == "sweep":
        result = sweep(a.engines, a.blocks, a.decisions, a.seed)
    else:
        result = fanin(a.engines, a.blocks, a.batch_blocks, a.seconds, a.seed)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
