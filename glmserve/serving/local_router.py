"""`glmserve up`'s own router: a `glmserve router serve` child process on loopback.

With tenants configured it admits requests too, from the same tenants file and limits store as
the ingress (which admits on its own only while the router does not answer).

Engines hash their prompt blocks with PYTHONHASHSEED pinned to ENGINE_HASH_SEED (set before
Ray starts, inherited by every engine process) so the router reproduces their block hashes.

It runs with a token of its own (glmserve.router.auth), made here: `glmserve up` puts it in the
environment its Ray node (and so the ingress and the engines) inherits.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from glmserve.common.config import ROUTER_HASHING, ROUTER_TOKEN_ENV, ServeConfig
from glmserve.common.errors import ConfigError
from glmserve.common.ports import free_port
from glmserve.serving.engine.args import pool_of

START_TIMEOUT_S = 60


def local_flow(cfg: ServeConfig, model: str) -> dict[str, Any]:
    """The local router's flow settings from `glmserve up`'s for the served `model`: the queue's
    TTL and bound (`max_queued_requests` per replica of the pool the queue waits for, at its
    largest), and a decode pool of 0 replicas whose requests wait for one to start."""
    pool = pool_of(cfg, "decode" if cfg.disaggregated else "colocated")
    replicas = max(1, pool.max_replicas or pool.replicas)
    flow: dict[str, Any] = {"queue_ttl_s": cfg.queue_ttl_s, "max_queued": cfg.max_queued_requests * replicas}
    if cfg.scales_from_zero:
        flow["scale_from_zero"] = [model]
    return flow


class LocalRouter:
    def __init__(
        self,
        workdir: Path,
        *,
        tenants_file: Path | None = None,
        redis_url: str | None = None,
        outage: Literal["fail-open", "fail-closed"] = "fail-open",
        flow: dict[str, Any] | None = None,
    ) -> None:
        """`tenants_file`: the router admits against these plans, with limits in `redis_url`
        (None: in the router's memory) and `outage` while Redis is unreachable; `flow`: its flow
        config's settings (glmserve.router.flow.config)."""
        self._workdir = workdir
        self._flow = flow or {}
        self._admission: dict[str, Any] | None = None
        if tenants_file is not None:
            self._admission = {"tenants_file": str(tenants_file.resolve()), "redis_url": redis_url, "outage": outage}
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.metrics_port = free_port()
        self.token = secrets.token_urlsafe(32)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        """Starts the router (again, after stop(): same ports) and returns its gRPC target."""
        config: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "metrics_port": self.metrics_port,
            "hashing": ROUTER_HASHING,
        }
        if self._admission is not None:
            config["admission"] = self._admission
        if self._flow:
            config["flow"] = self._flow
        path = self._workdir / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (self._workdir / "router.log").open("ab")
        cmd = [sys.executable, "-m", "glmserve.cli.main", "router", "serve", "--config", str(path)]
        env = {**os.environ, ROUTER_TOKEN_ENV: self.token}
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(f"the router exited at start-up (code {self._proc.returncode}); see {log.name}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self.target
            time.sleep(0.2)
        raise ConfigError(f"the router did not listen on {self.target} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
