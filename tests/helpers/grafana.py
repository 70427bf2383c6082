"""Dashboard queries as Prometheus sees them: variables resolved, metric names found."""

from __future__ import annotations

import re

from glmserve.common import metrics
from glmserve.dashboards.grafana import VARIABLES

# A metric name in a query: ours and the ones Ray exports (its own and vLLM's).
_METRIC = re.compile(r"\b(?:glmserve|ray)_[a-z_]+\b")
SPECS = {spec.name: spec for spec in metrics.all_specs()}


def as_sent(expr: str, time_range: str = "1h") -> str:
    """`expr` as Grafana sends it with every variable at "All" over `time_range`."""
    for name, all_value in VARIABLES.items():
        expr = expr.replace(f"${name}", all_value)
    expr = expr.replace("$__range", time_range)
    # Only label_replace's capture references ($1) may remain.
    assert re.findall(r"\$[A-Za-z_]\w*", expr) == [], expr
    return expr


def metric_names(expr: str) -> set[str]:
    """The metrics `expr` reads, named as their MetricSpec (a histogram's _bucket/_sum/_count dropped);
    a name no spec defines is returned as written."""
    names = set()
    for name in _METRIC.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in SPECS else name)
    return names
