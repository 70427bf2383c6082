"""The Serve config (`serveConfigV2`) of the RayService: one application, the P/D app."""

from __future__ import annotations

from typing import Any

from glmserve.common.deployment_plan import ServeAppArgs
from glmserve.operator.build.inputs import SERVE_PORT, TLS_DIR, DeploymentInputs

APP_NAME = "glmserve"
IMPORT_PATH = "glmserve.serving.entrypoint:app_builder"


def build_serve_config(inputs: DeploymentInputs) -> dict[str, Any]:
    http: dict[str, Any] = {"host": "0.0.0.0", "port": SERVE_PORT}
    if inputs.tls:
        # Every proxy terminates TLS itself, so every Ray pod mounts the Secret at TLS_DIR.
        http |= {"ssl_certfile": f"{TLS_DIR}/tls.crt", "ssl_keyfile": f"{TLS_DIR}/tls.key"}
    return {
        "proxy_location": "EveryNode",
        "http_options": http,
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": ServeAppArgs(deployment=inputs.spec, planner=inputs.plan).wire(),
            }
        ],
    }
