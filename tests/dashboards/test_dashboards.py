"""The dashboards: committed as generated, complete Grafana panels, valid PromQL over known metrics.

That their queries return data from a running stack is tests/dashboards/test_live_dashboards.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from glmserve.common import metrics, slo
from glmserve.dashboards import DASHBOARDS, render
from glmserve.dashboards.grafana import Dashboard
from tests.conftest import REPO
from tests.helpers.grafana import SPECS, as_sent, metric_names

COMMITTED = REPO / "dashboards"


def test_committed_dashboards_are_the_generated_ones() -> None:
    """Regenerate with `python -m glmserve.dashboards` after changing glmserve/dashboards."""
    assert sorted(p.name for p in COMMITTED.glob("*.json")) == sorted(d.filename for d in DASHBOARDS)
    for dashboard in DASHBOARDS:
        assert (COMMITTED / dashboard.filename).read_text() == render(dashboard), dashboard.filename


def test_the_chart_ships_the_committed_directory() -> None:
    assert (REPO / "charts" / "glmserve" / "dashboards").resolve() == COMMITTED.resolve()


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_panels_name_datasource_unit_and_thresholds(dashboard: Dashboard) -> None:
    model = dashboard.model()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {n for n, v in variables.items() if v["type"] == "query"} == {"namespace", "deployment", "model"}
    assert len({p["id"] for p in model["panels"]}) == len(model["panels"])
    for panel in model["panels"]:
        defaults = panel["fieldConfig"]["defaults"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert defaults["unit"], panel["title"]
        assert defaults["thresholds"]["steps"][0]["value"] is None, panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        assert panel["description"], panel["title"]


def test_queries_are_promql_over_metrics_we_know(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/install.sh --test installs it (apt package prometheus)")
    exprs = [t["expr"] for d in DASHBOARDS for p in d.model()["panels"] for t in p["targets"]]
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert used <= SPECS.keys(), (used - SPECS.keys(), expr)
    # promtool parses expressions only inside rules.
    rules = [{"record": f"check:{i}", "expr": as_sent(e)} for i, e in enumerate(exprs)]
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ttft_objective_is_a_bucket_bound() -> None:
    assert slo.TTFT_THRESHOLD_S in metrics.INGRESS_TTFT.buckets
