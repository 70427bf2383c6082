"""Session-wide fixtures: the local stack is started once, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from glmserve.serving.reaper import orphaned_shm

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def session_processes(sid: int) -> list[str]:
    """Processes of one session (what a command started with start_new_session=True left running)."""
    out = subprocess.run(["ps", "-ww", "-eo", "sid=,pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.split(None, 1)[0] == str(sid)]


def leftover_shm(since: float = 0.0, settle_s: float = 15.0) -> list[str]:
    """Engine shared memory created after `since` that nobody holds any more.

    Only segments created after `since` count: another stack still running owns older ones, which
    its processes need not map (multiprocessing leaves a spawn handshake's semaphores to its
    resource tracker until exit). Waits up to `settle_s` for exiting processes to release theirs.
    """
    deadline = time.monotonic() + settle_s
    while True:
        left = [p.name for p in orphaned_shm() if _mtime(p) >= since]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # unlinked while we looked
        return float("-inf")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that use the session's stack (tests/serving/conftest.py) run last, in their order:
    the stack then lives from its first user to the session's end without sharing this machine
    with another test's engines or Ray cluster, wherever a test file sorts. Whole modules move,
    so their module-scoped fixtures still start once."""
    users = {item.module for item in items if isinstance(item, pytest.Function) and "stack" in item.fixturenames}
    items.sort(key=lambda item: isinstance(item, pytest.Function) and item.module in users)
    _last_in_their_package(items)


def _last_in_their_package(items: list[pytest.Item]) -> None:
    """A module that sets `LAST_IN_PACKAGE = n` (n >= 1: it leaves a package-scoped fixture changed,
    as a head loss leaves the cluster's engines replaced, or replaces it) runs after the rest of its
    package's tests and after its package's modules with a smaller n, so that they still get the
    fixture as it started."""
    late = {item.module for item in items if getattr(getattr(item, "module", None), "LAST_IN_PACKAGE", 0)}
    for module in sorted(late, key=lambda m: (m.LAST_IN_PACKAGE, m.__name__)):
        moved = [item for item in items if getattr(item, "module", None) is module]
        package = moved[0].path.parent
        rest = [item for item in items if getattr(item, "module", None) is not module]
        end = max((i for i, item in enumerate(rest) if item.path.parent == package), default=len(rest) - 1)
        items[:] = rest[: end + 1] + moved + rest[end + 1 :]
