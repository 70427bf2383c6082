"""The router's YAML config and `glmserve router serve` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glmserve.common.config import ROUTER_TOKEN_ENV
from glmserve.common.errors import ConfigError
from glmserve.common.ports import free_port
from glmserve.router.config import PRESETS, RouterConfig, load_config
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def test_profiles_override_the_policy_preset(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
policy: approximate
profiles:
  prefill: {scorers: {prefix-cache: 1, load: 2}}
hashing: {seed: "0"}
workers:
  static: [{worker_id: w1, model: m, kv_events_endpoint: "tcp://10.0.0.1:5557"}]
""",
        ),
        port=6000,
    )
    assert cfg.port == 6000
    assert cfg.hashing.seed == "0"
    assert cfg.profile("prefill").scorers == {"prefix-cache": 1, "load": 2}
    assert cfg.profile("decode").scorers == PRESETS["approximate"][0]
    assert cfg.workers.static[0].info().kv_events_endpoint == "tcp://10.0.0.1:5557"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("policy: fastest", "policy"),
        ("profiles: {decode: {scorers: {prefix-magic: 1}}}", "unknown scorer 'prefix-magic'"),
        ("profiles: {decode: {scorers: {load: -1}}}", "greater than or equal to 0"),
        ("profiles: {decode: {filters: [healthy, nope]}}", "unknown filter 'nope'"),
        ("workers: {heartbeat_interval_s: 10, lease_s: 5}", "heartbeat_interval_s < lease_s"),
        ("hashing: {algo: sha256}", "sha256_cbor"),
        ("overload: {load_limit: {gold: 1}}", "load_limit"),
        ("colour: blue", "Extra inputs"),
        ("- a list", "mapping"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(write(tmp_path, text))


def test_serve_command_serves_until_sigterm_and_requires_the_token_from_its_environment(tmp_path: Path) -> None:
    port = free_port()
    config = write(tmp_path, "host: 127.0.0.1\nmetrics_port: null\n")
    token = "cli-router-token-0123456789"
    env = os.environ | {"PYTHONPATH": str(ROOT), ROUTER_TOKEN_ENV: token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "glmserve.cli.main", "router", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            deregister = pb_grpc.RouterStub(channel).Deregister
            with pytest.raises(grpc.RpcError) as refused:
                deregister(pb.DeregisterRequest(worker_id="w1"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            deregister(pb.DeregisterRequest(worker_id="w1"), timeout=5, metadata=[("authorization", f"Bearer {token}")])
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    ("text", "token", "complaint"),
    [
        ("policy: fastest\n", None, "invalid router config: policy"),
        ("host: 127.0.0.1\n", "too-short", f"{ROUTER_TOKEN_ENV} must hold at least 16 characters"),
    ],
)
def test_serve_command_reports_a_bad_config(tmp_path: Path, text: str, token: str | None, complaint: str) -> None:
    config = write(tmp_path, text)
    env = os.environ | {"PYTHONPATH": str(ROOT)} | ({ROUTER_TOKEN_ENV: token} if token else {})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "glmserve.cli.main", "router", "serve", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert complaint in done.stderr
    assert time.monotonic() - started < 60


def test_the_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "glmserve" / "router" / "example-config.yaml")
    assert cfg.hashing.seed == "0"
    assert cfg.model_dump() == RouterConfig(hashing={"seed": "0"}).model_dump()  # every other value is a default
