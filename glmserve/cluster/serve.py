"""The head's dashboard, called as KubeRay calls it: serveConfigV2 PUT to the Serve REST API, the
applications' status polled (`?api_type=declarative`), with the cluster's token when it has one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from glmserve.cluster.kuberay import DASHBOARD_PORT
from glmserve.common.errors import ConfigError

TIMEOUT_S = 2.0  # KubeRay's dashboard client timeout


@dataclass(frozen=True, slots=True)
class Dashboard:
    ip: str
    token: str | None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{DASHBOARD_PORT}"

    def raw(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT_S) -> bytes:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["x-ray-authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())

    def call(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT_S) -> Any:
        raw = self.raw(method, path, body, timeout)
        return json.loads(raw) if raw.strip() else None

    def healthy(self) -> bool:
        try:
            return b"success" in self.raw("GET", "/api/gcs_healthz")
        except OSError:  # URLError and HTTPError are OSErrors
            return False

    def submit(self, serve_config: dict[str, Any]) -> None:
        try:
            self.call("PUT", "/api/serve/applications/", serve_config, timeout=30)
        except urllib.error.HTTPError as exc:
            raise ConfigError(f"the head refused serveConfigV2 ({exc.code}): {exc.read().decode()[:2000]}") from None

    def applications(self) -> dict[str, Any]:
        found = self.call("GET", "/api/serve/applications/?api_type=declarative", timeout=10)
        return dict((found or {}).get("applications") or {})

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as the GCS knows them: node_id, node_ip, state."""
        found = self.call("GET", "/api/v0/nodes?limit=1000", timeout=10)
        return list(((found or {}).get("data") or {}).get("result", {}).get("result") or [])


def progress_line(apps: dict[str, Any]) -> tuple[bool, str]:
    """(ready, summary) as the RayService's status reads it: ready once every app is RUNNING."""
    if not apps:
        return False, "no application yet"
    parts = []
    for name, app in sorted(apps.items()):
        deployments = ", ".join(
            f"{d}: {(info.get('status') or '?').lower()}" for d, info in sorted((app.get("deployments") or {}).items())
        )
        parts.append(f"{name} {app.get('status', '?')}" + (f" ({deployments})" if deployments else ""))
        if app.get("status") == "DEPLOY_FAILED":
            raise ConfigError(f"application {name} failed to deploy: {app.get('message', '')[:4000]}")
    return all(app.get("status") == "RUNNING" for app in apps.values()), "; ".join(parts)
