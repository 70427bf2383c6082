"""Where a running `cluster up` keeps what `status`, `logs` and `down` read, and the lock that
makes a second `up` fail while one runs."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from glmserve.common.errors import ConfigError

ROOT = Path(os.environ.get("GLMSERVE_CLUSTER_DIR", "/var/tmp/glmserve-cluster"))
STATE = ROOT / "state.json"
LOCK = ROOT / "lock"


@dataclass(frozen=True, slots=True)
class HostRecord:
    name: str
    namespace: str
    role: str
    pool: str
    ip: str
    netns: str
    veth: str
    dir: str
    pid: int


@dataclass(frozen=True, slots=True)
class State:
    up_pid: int
    subnet: str
    gateway: str
    phase: str  # starting | running | stopping
    base_url: str | None
    dashboard: str | None
    auth_token: str | None
    hosts: tuple[HostRecord, ...]

    def write(self) -> None:
        ROOT.mkdir(parents=True, exist_ok=True)
        tmp = STATE.with_suffix(".tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(asdict(self), f, indent=2)
        tmp.replace(STATE)

    @classmethod
    def read(cls) -> State | None:
        try:
            raw: dict[str, Any] = json.loads(STATE.read_text())
        except FileNotFoundError:
            return None
        return cls(**{**raw, "hosts": tuple(HostRecord(**h) for h in raw["hosts"])})


def take_lock() -> IO[str]:
    """Held for the life of `up` (the kernel drops it when the process dies, however it dies)."""
    ROOT.mkdir(parents=True, exist_ok=True)
    handle = LOCK.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        running = State.read()
        pid = f" (pid {running.up_pid})" if running else ""
        raise ConfigError(f"a cluster is already up{pid}; run `glmserve cluster down` first") from None
    return handle


def lock_held() -> bool:
    if not LOCK.exists():
        return False
    with LOCK.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
