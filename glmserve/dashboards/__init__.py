"""glmserve's Grafana dashboards, generated from the metric names in glmserve.common.metrics.

`python -m glmserve.dashboards` writes them to dashboards/ (the chart ships that directory);
tests/dashboards checks that the committed files are what this code generates.
"""

from __future__ import annotations

import json

from glmserve.dashboards import experts, overview, pools, router, tenants
from glmserve.dashboards.grafana import Dashboard

DASHBOARDS: tuple[Dashboard, ...] = (
    overview.DASHBOARD,
    tenants.DASHBOARD,
    router.DASHBOARD,
    pools.DASHBOARD,
    experts.DASHBOARD,
)


def render(dashboard: Dashboard) -> str:
    return json.dumps(dashboard.model(), indent=2) + "\n"
