"""Every metrics endpoint of the local stack in one place: Prometheus HTTP service discovery.

A Prometheus given `http_sd_configs: [{url: <ingress>/metrics/sd}]` scrapes whatever the stack
runs, without knowing its ports: the ingress, Ray's metrics export (Ray, Serve and the engines'
vLLM metrics) and the router. In Kubernetes the chart's ServiceMonitors and PodMonitor do this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from glmserve.common.config import ServeConfig


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    job: str
    address: str  # host:port
    scheme: str = "http"
    path: str = "/metrics"


def http_sd(targets: Sequence[ScrapeTarget]) -> list[dict[str, Any]]:
    """Prometheus's HTTP SD format; `__scheme__` and `__metrics_path__` set how each is scraped."""
    return [
        {
            "targets": [target.address],
            "labels": {"job": target.job, "__scheme__": target.scheme, "__metrics_path__": target.path},
        }
        for target in targets
    ]


def local_targets(
    cfg: ServeConfig, ray_metrics_port: int | None, router_metrics_port: int | None = None
) -> list[ScrapeTarget]:
    """What `glmserve up` runs: its ingress, Ray's metrics export when it started Ray itself, and
    its own router when it started one."""
    ingress = urlsplit(cfg.base_url)
    targets = [ScrapeTarget("glmserve-ingress", ingress.netloc, ingress.scheme)]
    if ray_metrics_port is not None:
        targets.append(ScrapeTarget("glmserve-ray", f"127.0.0.1:{ray_metrics_port}"))
    if router_metrics_port is not None:
        targets.append(ScrapeTarget("glmserve-router", f"127.0.0.1:{router_metrics_port}"))
    return targets
