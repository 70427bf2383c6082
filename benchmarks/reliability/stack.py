"""The stack under test: `glmserve up` with two engine replicas, migration on, glmserve's router
admitting every request against plans in a real Redis, and one tenant per case (named in the
ingress's metrics, so that each case's billed tokens can be read)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from benchmarks.servers import launch, metric_sum, samples, stop, wait_ready
from glmserve.common.metrics import INGRESS_MIGRATIONS, INGRESS_TOKENS, VLLM_GENERATION_TOKENS
from glmserve.common.tenancy import hash_api_key
from tests.admission.redis_server import RedisServer
from tests.helpers.stack_processes import engine_cores

MAX_ONGOING = 6  # per engine replica (4 streams and a probe fit one replica): capacity is replicas x this
MAX_QUEUED = 2
REPLICAS = 2
STALL_S = 6
MIGRATION_LIMIT = 2


@dataclass
class Stack:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    redis: RedisServer
    keys: dict[str, str]  # tenant -> API key

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def engine_metrics(self) -> str:
        """Ray's metrics export, where the engines' vllm:* counters are."""
        return re.findall(r"engine and Ray metrics: (\S+)", self.log.read_text())[0]

    def billed(self, tenant: str) -> int:
        return int(metric_sum(self.metrics, INGRESS_TOKENS.name, tenant=tenant, direction="output"))

    def moves(self) -> int:
        return int(metric_sum(self.metrics, INGRESS_MIGRATIONS.name, outcome="moved"))

    def generated(self) -> dict[str, float]:
        """Output tokens each engine replica generated so far (as Ray last exported them)."""
        found = samples(self.engine_metrics, VLLM_GENERATION_TOKENS.name)
        return {str(sorted(s.labels.items())): s.value for s in found}

    def wait_for_engines(self, timeout: float = 600) -> float:
        """Seconds until every engine replica has its engine process again."""
        started = time.monotonic()
        while len(engine_cores(self.proc.pid)) < REPLICAS:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{REPLICAS} engine replicas did not come back within {timeout} s")
            time.sleep(1)
        return time.monotonic() - started


def start(workdir: Path, port: int, tenants: list[str]) -> Stack:
    keys = {tenant: f"sk-{tenant}-{secrets.token_hex(12)}" for tenant in tenants}
    plans = [{"name": "unlimited", "priority": "standard"}]
    entries = [{"id": t, "plan": "unlimited", "apiKeys": [{"sha256": hash_api_key(k)}]} for t, k in keys.items()]
    (workdir / "tenants.yaml").write_text(yaml.safe_dump({"plans": plans, "tenants": entries}))
    (workdir / "up.yaml").write_text(yaml.safe_dump({"metrics_tenants": tenants}))
    redis = RedisServer(workdir, persistent=True)  # a restart keeps the limits' state, as a real Redis would
    redis.start()
    cmd = [
        str(Path(sys.executable).parent / "glmserve"), "up", "--port", str(port), "--config", str(workdir / "up.yaml"),
        "--replicas", str(REPLICAS), "--migration-limit", str(MIGRATION_LIMIT), "--stall-timeout-s", str(STALL_S),
        "--max-model-len", "1024", "--max-ongoing-requests", str(MAX_ONGOING),
        "--max-queued-requests", str(MAX_QUEUED),
        "--tenants-file", str(workdir / "tenants.yaml"), "--redis-url", redis.url,
    ]  # fmt: skip
    log = workdir / "up.log"
    # Serve writes each request's access-log line at once (its throughput preset buffers 1,000),
    # so that the overload's breakdown reads the ingress's own time per request as each load ends.
    os.environ["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] = "1"
    with log.open("wb") as out:
        proc = launch(cmd, out)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc)
    except BaseException:
        stop(proc)
        redis.stop()
        raise
    return Stack(port, proc, log, redis, keys)


def shutdown(stack: Stack) -> None:
    stop(stack.proc)
    stack.redis.stop()


def restart_command(pid: int) -> tuple[list[str], dict[str, str], str]:
    """How process `pid` was started (command, environment, directory): to start it again as its
    supervisor (Kubernetes, for the router's Deployment) would."""
    proc = psutil.Process(pid)
    return proc.cmdline(), proc.environ(), proc.cwd()
