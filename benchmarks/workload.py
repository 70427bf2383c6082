"""A seeded agentic-coding workload: many tenants, each with a long shared context, and multi-turn
sessions on top of it.

Shape (every number is a `WorkloadConfig` field):
- each tenant has a shared context (system prompt + tool definitions + repository files) of
  `context_tokens` tokens that every session of the tenant starts with;
- sessions start as a Poisson process (`session_rate_per_s`), each owned by a random tenant;
- a session has `turns` turns; turn k's prompt is the context, then every earlier turn's user
  message and assistant reply, then turn k's user message (tool output, an edit request...), so
  prompts grow and each turn's prefix is the previous turn's whole conversation;
- the next turn arrives `think_s` (exponential) after the previous reply ended (closed loop: a
  slower system gets the next turn later, as a real agent would).
Token ids are random in [0, vocab) and drawn from one `numpy` generator seeded by `seed`, so
the same config always yields the same sessions, byte for byte.

Reuse: `python -m benchmarks.routing` drives a simulated cluster with it; anything else can call
`generate(WorkloadConfig(...))` and feed `Session.prompt(k)` to real engines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    seed: int = 0
    tenants: int = 12
    sessions: int = 240
    turns: int = 8
    session_rate_per_s: float = 1.0
    context_tokens: tuple[int, int] = (6000, 12000)  # per tenant, uniform in [low, high]
    user_tokens: tuple[int, int] = (100, 800)  # per turn
    output_tokens: tuple[int, int] = (50, 400)  # per turn
    think_s: float = 5.0  # mean
    vocab: int = 151_552  # GLM-4.6's


@dataclass(frozen=True, slots=True)
class Turn:
    user: np.ndarray  # uint32 tokens appended before the reply
    output: np.ndarray  # uint32 tokens of the reply
    think_s: float  # after this turn's reply, before the next turn


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    tenant: str
    start_s: float
    context: np.ndarray
    turns: tuple[Turn, ...]

    def prompt(self, k: int) -> np.ndarray:
        """Turn k's prompt: the context, turns 0..k-1 (user + reply), then turn k's user message."""
        parts = [self.context]
        for turn in self.turns[:k]:
            parts += [turn.user, turn.output]
        parts.append(self.turns[k].user)
        return np.concatenate(parts)


def generate(cfg: WorkloadConfig) -> list[Session]:
    """The sessions, ordered by start time."""
    rng = np.random.default_rng(cfg.seed)

    def tokens(bounds: tuple[int, int]) -> np.ndarray:
        return rng.integers(0, cfg.vocab, int(rng.integers(bounds[0], bounds[1] + 1)), dtype=np.uint32)

    contexts = [tokens(cfg.context_tokens) for _ in range(cfg.tenants)]
    starts = np.cumsum(rng.exponential(1 / cfg.session_rate_per_s, cfg.sessions))
    sessions = []
    for n, start in enumerate(starts):
        tenant = int(rng.integers(cfg.tenants))
        turns = tuple(
            Turn(tokens(cfg.user_tokens), tokens(cfg.output_tokens), float(rng.exponential(cfg.think_s)))
            for _ in range(cfg.turns)
        )
        sessions.append(Session(f"s{n}", f"tenant-{tenant}", float(start), contexts[tenant], turns))
    return sessions
