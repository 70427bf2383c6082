"""The engine's KV-cache use, read from vLLM's own scheduler stats, for the router's heartbeats.

vLLM reports it per scheduler step to its stat loggers; Ray exports it through its metrics agent,
where it lags by seconds and vanishes once the engine is idle. The router needs it current (its
`max_kv_cache_usage` filter, and the pool signal the autoscaling policy reads), so the replica keeps
the latest value itself. vLLM 0.32's AsyncLLM takes stat loggers only when it is built, and Ray
Serve LLM builds it, so this one joins the engine's logger manager afterwards.
"""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import AggregateStatLoggerBase
from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats


class KVCacheUsage(AggregateStatLoggerBase):
    """The latest KV-cache use (0-1) of each engine core of one AsyncLLM; their mean is the replica's."""

    def __init__(self, vllm_config: VllmConfig | None = None, engine_indexes: list[int] | None = None) -> None:
        self._usage: dict[int, float] = dict.fromkeys(engine_indexes or [0], 0.0)

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._usage[engine_idx] = scheduler_stats.kv_cache_usage

    def log_engine_initialized(self) -> None:
        pass

    @property
    def value(self) -> float:
        return min(1.0, max(0.0, sum(self._usage.values()) / len(self._usage)))

    @classmethod
    def attach(cls, engine_client: Any) -> KVCacheUsage | None:
        """A logger joined to `engine_client`'s (an AsyncLLM's) stat loggers; None when the engine
        keeps no stats (`disable_log_stats`): then its use is unknown."""
        manager = getattr(engine_client, "logger_manager", None)
        if manager is None:
            return None
        usage = cls(engine_indexes=list(manager.engine_indexes))
        manager.stat_loggers.append(usage)
        return usage
