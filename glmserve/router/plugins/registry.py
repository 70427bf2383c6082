"""Every routing plugin by the name configs use."""

from __future__ import annotations

from collections.abc import Callable

from glmserve.router.plugins import filters, pickers, scorers
from glmserve.router.plugins.base import Filter, Picker, PluginArgs, Scorer

FILTERS: dict[str, Callable[[PluginArgs], Filter]] = {
    "allowed": filters.Allowed,
    "healthy": filters.Healthy,
    "model": filters.ModelMatch,
    "role": filters.RoleMatch,
    "not-overloaded": filters.NotOverloaded,
}
SCORERS: dict[str, Callable[[PluginArgs], Scorer]] = {
    "prefix-cache": scorers.PrefixCache,
    "prefill-work": scorers.PrefillWork,
    "load": scorers.LoadScorer,
    "kv-cache-utilization": scorers.KVCacheUtilization,
}
PICKERS: dict[str, Callable[[PluginArgs], Picker]] = {
    "max-score": pickers.MaxScore,
    "round-robin": pickers.RoundRobin,
}
