"""The latency benchmark's data: what 64 engines hold, and the 8K-token prompts sent to the router.

16 tenants with a 4K-token context each, on 4 workers per tenant; each worker also holds
`sessions_per_worker` conversations that continue its tenant's context to 8K tokens (60 per worker
is about 1M (worker, block) index entries at block size 16). Requests: 10% never seen before, 90%
turns of agentic sessions. A session has 10 turns, taken in order and mixed with other sessions'
turns; turn t is the conversation cached on the worker up to 7168 + 96 t tokens, then new tokens up
to 8K. So a router replica sees each session's prefix first on its first turn (the case where the
whole cached prefix must be hashed) and then only the tokens each turn adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.sim.vllm_events import block_stored
from glmserve.router.hashing import BlockHasher

WORKERS = 64
TENANTS = 16
BLOCK = 16
CONTEXT_TOKENS = 4096
PROMPT_TOKENS = 8192
VOCAB = 151_552
TURNS = 10
ACTIVE_SESSIONS = 200
Batches = list[list[dict[str, Any]]]  # one engine's event batches


@dataclass(frozen=True, slots=True)
class Corpus:
    contexts: list[np.ndarray]  # per tenant
    sessions: list[list[np.ndarray]]  # per worker: 8K-token conversations it has cached

    def tenant_of(self, worker: int) -> int:
        return worker % TENANTS


def corpus(sessions_per_worker: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    contexts = [rng.integers(0, VOCAB, CONTEXT_TOKENS, dtype=np.uint32) for _ in range(TENANTS)]
    sessions = [
        [
            np.concatenate(
                [contexts[w % TENANTS], rng.integers(0, VOCAB, PROMPT_TOKENS - CONTEXT_TOKENS, dtype=np.uint32)]
            )
            for _ in range(sessions_per_worker)
        ]
        for w in range(WORKERS)
    ]
    return Corpus(contexts, sessions)


def requests(c: Corpus, n: int, seed: int) -> tuple[list[np.ndarray], list[bool]]:
    """n 8K-token prompts and whether each one's cached prefix is new to the router."""
    rng = np.random.default_rng(seed + 1)
    pool = [(w, s) for w in range(WORKERS) for s in range(len(c.sessions[w]))]
    order = rng.permutation(len(pool))
    live: list[tuple[int, int, int]] = []  # (worker, session, next turn)
    prompts, first = [], []
    for _ in range(n):
        if rng.random() < 0.1:
            prompts.append(rng.integers(0, VOCAB, PROMPT_TOKENS, dtype=np.uint32))
            first.append(True)
            continue
        if len(live) < ACTIVE_SESSIONS:
            w, s = pool[order[len(prompts) % len(pool)]]
            live.append((w, s, 0))
        k = int(rng.integers(len(live)))
        w, s, turn = live[k]
        live[k] = (w, s, turn + 1)
        if turn + 1 == TURNS:
            live.pop(k)
        cached = PROMPT_TOKENS - 1024 + 96 * turn
        fresh = rng.integers(0, VOCAB, PROMPT_TOKENS - cached, dtype=np.uint32)
        prompts.append(np.concatenate([c.sessions[w][s][:cached], fresh]))
        first.append(turn == 0)
    return prompts, first


def worker_events(c: Corpus, worker: int, hasher: BlockHasher) -> Batches:
    """The event batches an engine holding the worker's context and sessions would have sent."""
    context = c.contexts[c.tenant_of(worker)]
    ctx_hashes = hasher.block_hashes(context, BLOCK)
    batches = [[block_stored(ctx_hashes, context.tolist(), BLOCK)]]
    for session in c.sessions[worker]:
        hashes = hasher.block_hashes(session, BLOCK)[len(ctx_hashes) :]
        batches.append([block_stored(hashes, session[CONTEXT_TOKENS:].tolist(), BLOCK, ctx_hashes[-1])])
    return batches
