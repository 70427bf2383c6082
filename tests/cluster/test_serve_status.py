"""The RayService's readiness as KubeRay reads the declarative Serve status."""

from __future__ import annotations

import pytest

from glmserve.cluster.serve import progress_line
from glmserve.common.errors import ConfigError


def test_ready_only_when_every_application_runs() -> None:
    assert progress_line({}) == (False, "no application yet")
    deploying = {"glmserve": {"status": "DEPLOYING", "deployments": {"Ingress": {"status": "UPDATING"}}}}
    assert progress_line(deploying) == (False, "glmserve DEPLOYING (Ingress: updating)")
    running = {"glmserve": {"status": "RUNNING", "deployments": {"Ingress": {"status": "HEALTHY"}}}}
    assert progress_line(running)[0]


def test_a_failed_deploy_stops_the_wait_with_its_message() -> None:
    with pytest.raises(ConfigError, match="application glmserve failed to deploy: boom"):
        progress_line({"glmserve": {"status": "DEPLOY_FAILED", "message": "boom"}})
