"""Ray's token authentication on the multi-host cluster (KubeRay `authOptions: {mode: token}`,
the `<deployment>-ray-auth` Secret): a driver on a pod of the cluster's network that lacks the
token, or holds a wrong one, cannot run work on the cluster, and the dashboard refuses a client
without it. The same driver with the pod's own token runs, so the refusals are the token's doing."""

from __future__ import annotations

import urllib.error

import pytest

from glmserve.cluster.serve import Dashboard
from tests.cluster.conftest import GLMSERVE, RunningCluster, glmserve

pytestmark = pytest.mark.slow

GCS_PORT = 6379
DRIVER = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=0)
def one():
    return 1
print("ran", ray.get(one.remote(), timeout=60))
"""


def _driver(cluster: RunningCluster, *env: str) -> tuple[int, str]:
    """(exit code, output) of DRIVER run on a worker host with `env` (arguments of env(1)) applied
    to the pod's environment."""
    (head,) = cluster.hosts(role="head")
    worker = cluster.hosts(role="worker")[0]
    python = GLMSERVE[0]
    command = ["cluster", "exec", worker["name"], "--", "env", *env, python, "-c", DRIVER, f"{head['ip']}:{GCS_PORT}"]
    run = glmserve(*command, check=False, timeout=180)
    return run.returncode, run.stdout + run.stderr


def test_a_driver_with_the_pods_token_runs_work(tiny_cluster: RunningCluster) -> None:
    code, output = _driver(tiny_cluster)
    assert code == 0 and "ran 1" in output, output[-3000:]


@pytest.mark.parametrize(
    "env",
    [["-u", "RAY_AUTH_TOKEN", "-u", "RAY_AUTH_MODE"], ["RAY_AUTH_TOKEN=not-the-clusters-token"]],
    ids=["no token", "wrong token"],
)
def test_a_driver_without_the_token_gets_an_authentication_error(tiny_cluster: RunningCluster, env: list[str]) -> None:
    code, output = _driver(tiny_cluster, *env)
    assert code != 0 and "ran 1" not in output, output[-3000:]
    assert "authenticat" in output.lower(), output[-3000:]


def test_the_dashboard_refuses_a_client_without_the_token(tiny_cluster: RunningCluster) -> None:
    (head,) = tiny_cluster.hosts(role="head")
    with pytest.raises(urllib.error.HTTPError) as refused:
        Dashboard(head["ip"], None).raw("GET", "/api/serve/applications/", timeout=10)
    assert refused.value.code in (401, 403)
