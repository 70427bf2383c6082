"""When an engine replica counts as leaving Serve's running set (and so leaves the router), and
as coming back to it."""

from __future__ import annotations

from glmserve.serving.engine.membership import RunningSet


def test_a_replica_not_running_yet_has_not_left_and_joining_is_no_return() -> None:
    running = RunningSet("b")
    assert running.update({"a"}, available=True) is None
    assert running.update({"a", "b"}, available=True) is None
    assert running.seen


def test_leaving_after_running_is_reported_once() -> None:
    running = RunningSet("b")
    running.update({"a", "b"}, available=True)
    assert running.update({"a"}, available=True) == "left"
    assert running.update(set(), available=True) is None


def test_a_deleted_deployment_counts_as_leaving() -> None:
    running = RunningSet("b")
    running.update({"b"}, available=True)
    assert running.update({"b"}, available=False) == "left"


def test_a_replica_a_restarted_controller_recovers_comes_back() -> None:
    running = RunningSet("b")
    running.update({"a", "b"}, available=True)
    assert running.update(set(), available=True) == "left"  # recovering: not counted running yet
    assert running.update({"a", "b"}, available=True) == "back"
