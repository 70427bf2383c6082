"""`glmserve up --ray-address` joins the multi-host cluster (run on its head, as one would `kubectl
exec` into the head pod) and its Serve application lands on the worker hosts, never on the head.

The example's workers have one CPU each, all taken by the RayService's own engines and ingress, so
the test first takes the RayService's applications off (a declarative PUT of no application: Serve
and its proxies stay) and puts them back at the end, as KubeRay would submit serveConfigV2."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from openai import OpenAI

from glmserve.cluster.serve import Dashboard, progress_line
from glmserve.cluster.state import State
from glmserve.operator.build.inputs import SERVE_PORT
from tests.cluster.conftest import GLMSERVE, RunningCluster

pytestmark = pytest.mark.slow

READY_WITHIN_S = 300.0


def _dashboard() -> Dashboard:
    state = State.read()
    assert state is not None and state.dashboard is not None
    return Dashboard(state.dashboard.removeprefix("http://").split(":")[0], state.auth_token)


def _declarative(details: dict[str, Any], applications: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "proxy_location": details["proxy_location"],
        "http_options": {k: details["http_options"][k] for k in ("host", "port")},
        "applications": applications,
    }


def _wait_until(what: str, check: Any, within_s: float = READY_WITHIN_S) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} within {within_s:.0f} s"
        time.sleep(2)


def test_glmserve_up_joins_the_cluster_and_serves_from_worker_hosts(tiny_cluster: RunningCluster) -> None:
    dashboard = _dashboard()
    details = dashboard.call("GET", "/api/serve/applications/", timeout=10)
    own = [app["deployed_app_config"] for app in details["applications"].values()]
    (head,) = tiny_cluster.hosts(role="head")
    workers = {h["ray_node_id"] for h in tiny_cluster.hosts(role="worker")}
    dashboard.submit(_declarative(details, []))
    _wait_until("the RayService's applications were not removed", lambda: not dashboard.applications())

    up = subprocess.Popen(
        [*GLMSERVE, "cluster", "exec", head["name"], "--", sys.executable, "-m", "glmserve.cli.main", "up",
         "--ray-address", f"{head['ip']}:6379", "--host", "0.0.0.0", "--port", str(SERVE_PORT),
         "--kv-cache-gib", "0.25"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    try:
        assert up.stdout is not None
        started = time.monotonic()
        for line in up.stdout:
            output.append(line)
            if line.startswith("glmserve: ready:"):
                break
        assert output and output[-1].startswith("glmserve: ready:"), "glmserve up failed:\n" + "".join(output[-40:])
        print(f"\nglmserve up --ray-address: ready after {time.monotonic() - started:.0f} s")

        apps = dashboard.call("GET", "/api/serve/applications/", timeout=10)["applications"]
        replicas = {(name, r["node_id"]) for name, d in apps["glmserve"]["deployments"].items() for r in d["replicas"]}
        print(f"replicas (deployment, node): {sorted(replicas)}; head node {head['ray_node_id']}")
        assert replicas and all(node in workers for _, node in replicas), "a replica runs off the worker hosts"
        assert head["ray_node_id"] not in {node for _, node in replicas}

        # Serve runs a proxy on each node with a replica (and the head): ask the ingress replica's node.
        ips = {h["ray_node_id"]: h["ip"] for h in tiny_cluster.hosts()}
        (node,) = {node for name, node in replicas if name == "Ingress"}
        client = OpenAI(base_url=f"http://{ips[node]}:{SERVE_PORT}/v1", api_key="open", max_retries=0)
        _wait_until("the joined application did not answer", lambda: _serves(client, tiny_cluster.model), 60)
    finally:
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=120)
        output.append(rest)
        dashboard.submit(_declarative(details, own))
    assert up.returncode == 0, "".join(output[-40:])
    assert "stopped" in output[-1]

    def running() -> bool:
        apps = dashboard.applications()
        return progress_line(apps)[0] and set(apps) == {a["name"] for a in own}

    _wait_until("the RayService's applications were not RUNNING again", running)
    restored = OpenAI(base_url=tiny_cluster.base_url, api_key=tiny_cluster.pro_key, max_retries=0)
    _wait_until("the RayService did not serve again", lambda: _serves(restored, tiny_cluster.model), 120)


def _serves(client: OpenAI, model: str) -> bool:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "back?"}], max_tokens=2)
    except Exception:
        return False
    return True
