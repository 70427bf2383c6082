"""Grafana's dashboard JSON model (schema 39), just the parts glmserve's dashboards use.

Every panel reads the `datasource` variable, names its unit and sets thresholds; queries filter
on the `namespace`, `deployment` and `model` variables, whose "All" is `.*`, which also matches
the series of a local stack (no namespace or deployment labels there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from glmserve.common import metrics as m
from glmserve.common.promql import MODEL_DEPLOYMENT, Query

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's variables, by name, and what "All" stands for.
VARIABLES = {"namespace": ".*", "deployment": ".*", "model": ".*"}
WIDTH = 24

Color = Literal["green", "yellow", "orange", "red", "blue"]
# (color, from value): the first step starts at -inf; a timeseries draws a line at each later one.
Thresholds = tuple[tuple[Color, float | None], ...]


def _scope(spec: m.MetricSpec) -> str:
    matchers = ['namespace=~"$namespace"', f'{MODEL_DEPLOYMENT}=~"$deployment"']
    if "model" in spec.labels:
        matchers.append('model=~"$model"')
    elif m.component(spec) == "engine":
        matchers.append('model_name=~"$model"')
    return ",".join(matchers)


Q = Query(_scope)


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    thresholds: Thresholds = (("green", None),)
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12

    def model(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        steps = [{"color": color, "value": value} for color, value in self.thresholds]
        defaults: dict[str, Any] = {"unit": self.unit, "thresholds": {"mode": "absolute", "steps": steps}}
        options: dict[str, Any]
        if self.kind == "timeseries":
            defaults["custom"] = {"thresholdsStyle": {"mode": "line" if len(steps) > 1 else "off"}}
            options = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
        else:
            defaults["color"] = {"mode": "thresholds"}
            options = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": self.width, "h": self.height},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options,
            "targets": [
                {"datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend, "refId": chr(ord("A") + i)}
                for i, t in enumerate(self.targets)
            ],
        }

    @property
    def height(self) -> int:
        return 4 if self.kind == "stat" else 8


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=("glmserve",))

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"

    def model(self) -> dict[str, Any]:
        panels, x, y, row_height = [], 0, 0, 0
        for n, panel in enumerate(self.panels, 1):
            if x + panel.width > WIDTH:
                x, y, row_height = 0, y + row_height, 0
            panels.append(panel.model(n, x, y))
            x, row_height = x + panel.width, max(row_height, panel.height)
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "time": {"from": "now-3h", "to": "now"},
            "refresh": "30s",
            "timezone": "browser",
            "annotations": {"list": []},
            "templating": {"list": _variables()},
            "panels": panels,
        }


def _query_variable(name: str, label: str, title: str, depends: str) -> dict[str, Any]:
    query = f"label_values({m.INGRESS_REQUESTS.name}{{{depends}}}, {label})"
    return {
        "name": name,
        "label": title,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "allValue": VARIABLES[name],
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
    }


def _variables() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
        _query_variable("namespace", "namespace", "Namespace", ""),
        _query_variable("deployment", MODEL_DEPLOYMENT, "ModelDeployment", 'namespace=~"$namespace"'),
        _query_variable("model", "model", "Model", f'namespace=~"$namespace",{MODEL_DEPLOYMENT}=~"$deployment"'),
    ]
