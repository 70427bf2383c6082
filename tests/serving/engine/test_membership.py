"""When an engine replica counts as leaving Serve's running set (and so leaves the router)."""

from __future__ import annotations

from glmserve.serving.engine.membership import RunningSet


def test_a_replica_not_running_yet_has_not_left() -> None:
    running = RunningSet("b")
    assert not running.update({"a"}, available=True)
    assert not running.seen


def test_leaving_after_running_fires_once() -> None:
    running = RunningSet("b")
    assert not running.update({"a", "b"}, available=True)
    assert running.update({"a"}, available=True)
    assert not running.update(set(), available=True)
    assert running.left


def test_a_deleted_deployment_counts_as_leaving() -> None:
    running = RunningSet("b")
    running.update({"b"}, available=True)
    assert running.update({"b"}, available=False)
