"""The stack under test: `glmserve up` over HTTPS with a throwaway certificate."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openai import OpenAI

from glmserve.common.ports import free_port
from tests.admission.redis_server import RedisServer, serve_redis
from tests.conftest import VENV_BIN, leftover_shm, session_processes
from tests.helpers.otlp import OtlpReceiver, otlp_receiver
from tests.serving.tenants import KEYS, write_tenants

START_TIMEOUT_S = 600
# Small admission limits so that the overload test can fill an engine with a dozen requests.
MAX_ONGOING = 4
MAX_QUEUED = 2


@dataclass(frozen=True)
class Stack:
    base_url: str
    cert: Path
    log: Path
    sid: int  # the session of `glmserve up` and every process it started
    api_key: str = "unused"  # stacks without a tenants file accept any key
    traces: OtlpReceiver | None = None  # where the stack exports its spans, if anywhere

    @property
    def metrics_url(self) -> str:
        """Ray's metrics export: every actor's metrics, the engines' vllm:* series included."""
        # glmserve up prints it just after "ready", which can come after /health first answers.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if "engine and Ray metrics: " in line:
                    return line.split("metrics: ", 1)[1].strip()
            time.sleep(0.5)
        raise AssertionError("glmserve up did not print its metrics endpoint")

    @property
    def router_metrics_url(self) -> str:
        """The local router's metrics (its pool gauges, workers, cold starts)."""
        line = next((x for x in self.log.read_text().splitlines() if "glmserve: router: " in x), None)
        assert line is not None, "glmserve up started no router"
        return line.split("(metrics ", 1)[1].rstrip(")").strip()

    def client(self, api_key: str | None = None, **kwargs: object) -> OpenAI:
        key = api_key or self.api_key
        return OpenAI(base_url=self.base_url, api_key=key, http_client=self.http(), **kwargs)  # type: ignore[arg-type]

    def http(self, api_key: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {api_key or self.api_key}"}
        return httpx.Client(verify=str(self.cert), timeout=120, headers=headers)

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")


def self_signed(dirpath: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dirpath / "cert.pem", dirpath / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)  # glmserve up refuses a key others can read
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _pump(stream: object, log: Path, ready: threading.Event, url: list[str]) -> None:
    with log.open("w") as out:
        for line in stream:  # type: ignore[attr-defined]
            out.write(line)
            out.flush()
            if "glmserve: ready: " in line:
                url.append(line.split("ready: ", 1)[1].split(" ", 1)[0])
                ready.set()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, stack_redis: RedisServer) -> Iterator[Stack]:
    """The colocated stack, with tenants (tests/serving/tenants.py) whose limits live in a real Redis,
    exporting its traces to a receiver of its own."""
    tmp = tmp_path_factory.mktemp("stack")
    tenants_file = write_tenants(tmp / "tenants.yaml")
    flags = ["--max-ongoing-requests", str(MAX_ONGOING), "--max-queued-requests", str(MAX_QUEUED)]
    flags += ["--tenants-file", str(tenants_file), "--redis-url", stack_redis.url]
    with otlp_receiver() as traces:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        for running in run_stack(tmp, flags, env):
            yield replace(running, api_key=KEYS["test"], traces=traces)


@pytest.fixture(scope="session")
def stack_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path_factory)


def run_stack(
    tmp: Path,
    flags: list[str],
    env: dict[str, str] | None = None,
    *,
    port: int | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Stack]:
    """`glmserve up FLAGS` over HTTPS (with `env` added to its environment) until the generator is
    closed; then checks it left nothing. `port` and `tls` (certificate, key): chosen beforehand, for
    a scraper started first; default: a free port, a throwaway certificate."""
    cert, key = tls or self_signed(tmp)
    port = port or free_port()
    log = tmp / "glmserve-up.log"
    started = time.time()
    cmd = [
        str(VENV_BIN / "glmserve"), "up", "--port", str(port), "--tls-certfile", str(cert), "--tls-keyfile", str(key),
        *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    ready, url = threading.Event(), []
    threading.Thread(target=_pump, args=(proc.stdout, log, ready, url), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"glmserve up did not become ready; log:\n{log.read_text()[-5000:]}")
    try:
        yield Stack(url[0], cert, log, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("glmserve up did not stop within 120 s of SIGTERM")
    # The shutdown contract: nothing of the stack survives it.
    time.sleep(1)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert session_processes(proc.pid) == []
    assert leftover_shm(since=started) == []


@pytest.fixture(scope="module")
def own_ray() -> Iterator[None]:
    """Ray Serve LLM's deployment options start Ray implicitly, which joins whatever cluster
    /tmp/ray last recorded (a dead one hangs, and ray.shutdown leaves it recorded); every test
    that asks for them runs inside one private cluster instead."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
