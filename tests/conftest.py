"""Session-wide fixtures: the local stack is started once, through the real CLI."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from glmserve.serving.reaper import orphaned_shm

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_processes(sid: int) -> list[str]:
    """Processes of one session (what a command started with start_new_session=True left running)."""
    out = subprocess.run(["ps", "-eo", "sid=,pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.split(None, 1)[0] == str(sid)]


def leftover_shm() -> list[str]:
    """Engine shared memory nobody holds any more (live stacks' segments are not leftovers)."""
    return [p.name for p in orphaned_shm()]
