"""/metrics/sd's content: Prometheus HTTP service discovery for what `glmserve up` runs."""

from __future__ import annotations

from pathlib import Path

from glmserve.common.config import ServeConfig
from glmserve.serving.ingress.discovery import http_sd, local_targets


def test_https_ingress_rays_export_and_the_router(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-"), key.write_text("-")
    cfg = ServeConfig(port=8443, tls_certfile=cert, tls_keyfile=key)
    assert http_sd(local_targets(cfg, 9100, 9200)) == [
        {
            "targets": ["127.0.0.1:8443"],
            "labels": {"job": "glmserve-ingress", "__scheme__": "https", "__metrics_path__": "/metrics"},
        },
        {
            "targets": ["127.0.0.1:9100"],
            "labels": {"job": "glmserve-ray", "__scheme__": "http", "__metrics_path__": "/metrics"},
        },
        {
            "targets": ["127.0.0.1:9200"],
            "labels": {"job": "glmserve-router", "__scheme__": "http", "__metrics_path__": "/metrics"},
        },
    ]


def test_joined_cluster_lists_the_ingress_at_a_reachable_address() -> None:
    """Joining a Ray cluster without a router of its own, the stack started neither Ray's export nor
    a router; a wildcard listen address is scraped on loopback."""
    [target] = local_targets(ServeConfig(host="0.0.0.0", port=8000), None)
    assert (target.job, target.address, target.scheme) == ("glmserve-ingress", "127.0.0.1:8000", "http")
