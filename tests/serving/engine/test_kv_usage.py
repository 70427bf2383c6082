"""The engine's KV use as vLLM's stat logger manager hands it out, kept for the router's heartbeats."""

from __future__ import annotations

from types import SimpleNamespace

from vllm.v1.metrics.loggers import AggregateStatLoggerBase
from vllm.v1.metrics.stats import SchedulerStats

from glmserve.serving.engine.kv_usage import KVCacheUsage


def test_the_latest_step_of_each_engine_core_counts_and_their_mean_is_the_replicas() -> None:
    usage = KVCacheUsage(engine_indexes=[0, 1])
    assert isinstance(usage, AggregateStatLoggerBase)  # what vLLM's manager calls: record, log
    assert usage.value == 0.0  # no step yet
    usage.record(SchedulerStats(kv_cache_usage=0.6), None, engine_idx=0)
    usage.record(SchedulerStats(kv_cache_usage=0.2), None, engine_idx=1)
    assert usage.value == 0.4
    usage.record(None, None, engine_idx=1)  # a step without scheduler stats changes nothing
    usage.record(SchedulerStats(kv_cache_usage=0.0), None, engine_idx=0)
    assert usage.value == 0.1
    usage.log()
    usage.log_engine_initialized()


def test_it_joins_the_engines_loggers_or_is_none_when_the_engine_keeps_no_stats() -> None:
    manager = SimpleNamespace(engine_indexes=[0], stat_loggers=[])
    usage = KVCacheUsage.attach(SimpleNamespace(logger_manager=manager))
    assert usage is not None and manager.stat_loggers == [usage]
    assert KVCacheUsage.attach(SimpleNamespace(logger_manager=None)) is None
