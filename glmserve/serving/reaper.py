"""Leave nothing behind: adopt orphaned engine processes and remove their shared memory.

Ray kills replica actors abruptly; their vLLM EngineCore/worker children then outlive them,
holding gigabytes in /dev/shm. As a child subreaper the launcher inherits those orphans and
can end them after Ray has shut down.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
# multiprocessing.shared_memory blocks (vLLM's message queues) and multiprocessing semaphores.
_SHM_PATTERNS = ("psm_*", "sem.mp-*")


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_descendants(grace_s: float = 5.0) -> int:
    """SIGTERM every descendant, SIGKILL what is left after `grace_s`; returns how many there were."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(children)


def _mapped_shm() -> set[str]:
    """/dev/shm files some live process still maps or holds open."""
    held: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    held.add(line[line.index("/dev/shm/") :].split(" ")[0])
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/dev/shm/"):
                        held.add(target)
    return held


def orphaned_shm(root: Path = Path("/dev/shm")) -> list[Path]:
    """Engine shared-memory segments that no live process maps or holds open."""
    if not root.is_dir():
        return []
    held = _mapped_shm()
    return sorted(p for pattern in _SHM_PATTERNS for p in root.glob(pattern) if str(p) not in held)


def sweep_shm(since: float, root: Path = Path("/dev/shm")) -> list[str]:
    """Unlinks orphaned shared-memory segments created after `since` (ours, not older ones)."""
    removed = []
    for path in orphaned_shm(root):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= since:
                path.unlink()
                removed.append(path.name)
    if removed:
        log.info("removed %d leaked shared-memory segments", len(removed))
    return removed
