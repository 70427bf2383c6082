"""How far lower plans may fill the engines while a higher plan is active, learned from the engines' pace.

A fixed share of the slots cannot be right everywhere: on a GPU, decode steps barely slow down
with a few more sequences, while on a small CPU host three extra streams saturate the cores and a
premium request's TTFT rises by half (`python -m benchmarks.priority`). So the share is scaled by
a factor kept in AIMD fashion, TCP Vegas style, against the inter-token latency (ITL) every
stream sees:

- each `interval_s` the mean ITL of that interval is compared with the least such mean in the
  last `base_window_s` (the engines' uncontended pace, as Vegas keeps its base RTT);
- above `slow` times the base, the engines are contended: the factor shrinks by `backoff`
  (at once, so the higher plan recovers within an interval or two);
- at or below `fast` times the base while lower plans are waiting for a slot, the factor grows
  by `probe` per interval (slowly, probing for what the engines can take without slowing).

ITL is the signal rather than TTFT because it does not depend on prompt lengths: a long prompt
makes a slow first token on an idle engine too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PaceConfig:
    interval_s: float = 0.5
    base_window_s: float = 120.0
    min_tokens: int = 8  # fewer tokens in an interval say nothing about the pace
    slow: float = 1.25
    fast: float = 1.1
    backoff: float = 0.7
    probe: float = 0.1
    min_scale: float = 0.05

    def __post_init__(self) -> None:
        if not 1.0 <= self.fast <= self.slow:
            raise ValueError(f"need 1 <= fast <= slow, got fast={self.fast} slow={self.slow}")
        if not 0 < self.backoff < 1 or not 0 < self.min_scale <= 1 or self.probe <= 0:
            raise ValueError("need 0 < backoff < 1, 0 < min_scale <= 1 and probe > 0")


class EnginePace:
    """The share factor in [min_scale, 1] for one model's engines, from observed token gaps."""

    def __init__(self, config: PaceConfig | None = None, start: float = 0.0) -> None:
        self.config = config or PaceConfig()
        self.scale = 1.0
        self.last_ratio = 1.0  # the last closed interval's mean ITL over the base
        self._interval_start = start
        self._gaps = 0.0
        self._tokens = 0
        self._means: deque[tuple[float, float]] = deque()  # (interval end, mean ITL), oldest first

    def observe(self, gap_s: float, tokens: int = 1) -> None:
        """`tokens` tokens arrived `gap_s` apart on one stream."""
        self._gaps += gap_s * tokens
        self._tokens += tokens

    def due(self, now: float) -> bool:
        """Whether the current interval is over (`update` would close it)."""
        return now - self._interval_start >= self.config.interval_s

    def update(self, now: float, *, limited: bool, demand: bool) -> bool:
        """Close the interval if it is over. `limited`: a higher class is active, so the factor
        applies; `demand`: lower classes are waiting for a slot. True if the factor grew."""
        cfg = self.config
        if not self.due(now):
            return False
        tokens, gaps = self._tokens, self._gaps
        self._interval_start, self._gaps, self._tokens = now, 0.0, 0
        if tokens < cfg.min_tokens:
            return False
        mean = gaps / tokens
        while self._means and self._means[0][0] < now - cfg.base_window_s:
            self._means.popleft()
        self._means.append((now, mean))
        base = min(m for _, m in self._means)
        self.last_ratio = mean / base if base > 0 else 1.0
        if not limited:
            return False
        if self.last_ratio > cfg.slow:
            self.scale = max(cfg.min_scale, self.scale * cfg.backoff)
        elif self.last_ratio <= cfg.fast and demand and self.scale < 1.0:
            self.scale = min(1.0, self.scale + cfg.probe)
            return True
        return False
