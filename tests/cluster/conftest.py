"""One multi-host cluster per test session: `glmserve cluster up -f examples/cluster-tiny`, as root.

Contract for later tests (host loss, P/D across hosts, autoscaling): put them under tests/cluster
and request the fixture `tiny_cluster` (a `RunningCluster`); it is RUNNING when handed out. Tests
may kill or cut hosts, but must leave every pool with a live host when they end (the cluster
replaces a dead host by itself: wait for it with `wait_for_hosts`). After the package's last test
`glmserve cluster down` runs and the fixture asserts that no namespace, veth, bridge, process or
/dev/shm file is left.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from glmserve.cluster import netns
from glmserve.cluster.serve import Dashboard
from glmserve.cluster.state import State
from glmserve.operator.build.inputs import ROUTER_METRICS_PORT, SERVE_PORT
from glmserve.serving.tiny.create import create_tiny, default_cache_dir
from tests.helpers.offline_vllm import run_offline

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cluster-tiny"
GLMSERVE = [sys.executable, "-m", "glmserve.cli.main"]
MODELS_CLAIM = "glmserve-models"  # the example's model claim: the tiny checkpoint's parent directory here
MODELS = default_cache_dir().parent
# Completions (no chat template) whose greedy tokens the cluster must reproduce; the long one spans
# several KV blocks, so that its KV crosses the bridge block by block.
GREEDY_PROMPTS = ("Once upon a time", "hello", "List three colours. " * 20)
GREEDY_MAX_TOKENS = 24


def glmserve(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GLMSERVE, *args], capture_output=True, text=True, check=check, timeout=timeout)


def example_api_keys(directory: Path) -> dict[str, str]:
    """tenant -> its first development API key, read from the example's Secrets."""
    docs = [d for p in sorted(directory.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    keys = {}
    for tenant in (d for d in docs if d["kind"] == "Tenant"):
        ref = tenant["spec"]["apiKeys"][0]["secretRef"]
        secret = secrets[ref["name"]]
        key = ref.get("key", "api-key")
        value = (secret.get("stringData") or {}).get(key) or base64.b64decode(secret["data"][key]).decode()
        keys[tenant["metadata"]["name"]] = value.strip()
    return keys


@dataclass
class RunningCluster:
    base_url: str
    api_keys: dict[str, str]  # tenant -> API key
    process: subprocess.Popen[str]
    log: Path  # `cluster up`'s progress (stderr)
    started_s: float  # seconds from `cluster up` to RUNNING
    offline: dict[str, Any]  # vLLM offline: GREEDY_PROMPTS' greedy tokens, each step's lead (helpers.offline_vllm)
    model: str = field(default="glm-4.6-tiny")

    @property
    def pro_key(self) -> str:
        """The key of the example's tenant on its pro plan, whose limits no test reaches (the free
        plan allows 2 requests at once and 20 a minute)."""
        return self.api_keys["bob"]

    def status(self) -> dict[str, Any]:
        return dict(json.loads(glmserve("cluster", "status", "--json").stdout))

    def hosts(self, role: str | None = None, pool: str | None = None) -> list[dict[str, Any]]:
        return [
            h
            for h in self.status()["hosts"]
            if (role is None or h["role"] == role) and (pool is None or h["pool"] == pool)
        ]

    def dashboard(self) -> Dashboard:
        """The live head's dashboard (a replaced head is a new host with a new IP)."""
        state = State.read() or pytest.fail("no cluster state")
        (head,) = [h for h in self.hosts(role="head") if h["pids"]]
        return Dashboard(head["ip"], state.auth_token)

    def replicas(self, dashboard: Dashboard | None = None) -> dict[str, str]:
        """Every RUNNING Serve replica's actor name -> its deployment."""
        found = (dashboard or self.dashboard()).call("GET", "/api/serve/applications/", timeout=10)
        return {
            replica["actor_name"]: deployment
            for app in found["applications"].values()
            for deployment, details in app["deployments"].items()
            for replica in details["replicas"]
            if replica["state"] == "RUNNING"
        }

    def exec(self, host: str, *command: str) -> subprocess.CompletedProcess[str]:
        return glmserve("cluster", "exec", host, "--", *command)

    def kill_host(self, name: str) -> None:
        """SIGKILL every process of a host (the pod's node dies; its namespace stays until replaced)."""
        host = next(h for h in self.hosts() if h["name"] == name)
        for pid in netns.pids(host["netns"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cut_link(self, name: str, cut: bool = True) -> None:
        """Down (or back up) the host's veth on the bridge: its processes live on, unreachable."""
        host = next(h for h in self.hosts() if h["name"] == name)
        netns.set_link(host["veth"], up=not cut)

    def metrics(self, host: dict[str, Any], port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """A host's Prometheus samples: (name, labels) -> value."""
        with urllib.request.urlopen(f"http://{host['ip']}:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def _ingress_totals(self, name: str, *by: str) -> dict[tuple[str, ...], float]:
        """The ingress host's samples of counter `name`, summed by the values of the labels `by`."""
        (ingress,) = self.hosts(pool="ingress")
        found: dict[tuple[str, ...], float] = {}
        for (sample, labels), value in self.metrics(ingress, SERVE_PORT).items():
            if sample == name:
                key = tuple(dict(labels)[label] for label in by)
                found[key] = found.get(key, 0) + value
        return found

    def migrations(self) -> dict[str, float]:
        """The ingress's request migrations so far, by outcome (moved, refused)."""
        return {
            outcome: n for (outcome,), n in self._ingress_totals("glmserve_ingress_migrations_total", "outcome").items()
        }

    def billed(self) -> dict[tuple[str, ...], float]:
        """(plan, direction) -> tokens the ingress counted so far (tenants outside metrics_tenants
        share a label; the example's two tenants are on different plans)."""
        return self._ingress_totals("glmserve_ingress_tokens_total", "plan", "direction")

    def billed_since(
        self, before: dict[tuple[str, ...], float], received: dict[tuple[str, ...], float]
    ) -> dict[tuple[str, ...], float]:
        """What the ingress billed since `before` for the keys of `received`, read until it equals
        `received` or 5 s have passed (the ingress settles a stream just after its last bytes)."""
        deadline = time.monotonic() + 5
        while True:
            after = self.billed()
            billed = {k: after.get(k, 0) - before.get(k, 0) for k in received}
            if billed == received or time.monotonic() > deadline:
                return billed
            time.sleep(0.5)

    def healthy_engines(self, role: str) -> list[float]:
        """Each router's count of healthy engines of a pool role."""
        return [
            value
            for router in self.hosts(role="router")
            for (name, labels), value in self.metrics(router, ROUTER_METRICS_PORT).items()
            if name == "glmserve_router_workers" and dict(labels) == {"role": role, "state": "healthy"}
        ]

    def first_reply(self, since: float, within_s: float) -> float:
        """Asks (as the pro tenant) every 2 s until a request succeeds: seconds from `since`."""
        client = OpenAI(base_url=self.base_url, api_key=self.pro_key, timeout=60, max_retries=0)
        while True:
            try:
                reply = client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "back?"}], max_tokens=4
                )
            except (openai.APIError, openai.APIConnectionError):
                assert time.monotonic() - since < within_s, f"no request succeeded within {within_s:.0f} s"
                time.sleep(2)
                continue
            assert reply.choices[0].message.content is not None
            return time.monotonic() - since

    def wait_for_hosts(self, pool: str, count: int, timeout_s: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [h for h in self.hosts(pool=pool) if h["pids"]]
            if len(found) >= count:
                return found
            time.sleep(1)
        raise AssertionError(f"pool {pool} did not get {count} live host(s) within {timeout_s} s")


def greedy_completions(cluster: RunningCluster) -> tuple[list[list[int]], list[list[int]]]:
    """GREEDY_PROMPTS as completions through the cluster: (prompt token ids, generated token ids)."""
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.pro_key, timeout=120, max_retries=0)
    prompts, served = [], []
    for prompt in GREEDY_PROMPTS:
        reply = client.completions.create(
            model=cluster.model, prompt=prompt, max_tokens=GREEDY_MAX_TOKENS, temperature=0,
            extra_body={"return_token_ids": True},
        )  # fmt: skip
        prompts.append(reply.choices[0].model_extra["prompt_token_ids"])  # type: ignore[index]
        served.append(reply.choices[0].model_extra["token_ids"])  # type: ignore[index]
    return prompts, served


def stream_outcome(read: Callable[[], None]) -> str:
    """How a client's stream ended: `read()` took it to its end ("completed"), its connection
    dropped without an error event, or the ingress ended it with an OpenAI error event."""
    try:
        read()
    except openai.APIConnectionError:
        return "connection dropped"
    except openai.APIError as exc:  # the ingress's OpenAI error event
        return f"error event: {exc.message}"
    return "completed"


def longest_wait(arrivals: list[float], ended_at: float, since: float) -> float:
    """The longest a stream's client waited for a chunk (or the stream's end) after `since`."""
    times = [since, *(t for t in arrivals if t > since), ended_at]
    return max(b - a for a, b in itertools.pairwise(times))


def shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


@contextlib.contextmanager
def cluster_up(
    directory: Path, tmp_path_factory: pytest.TempPathFactory, within_s: float | None = None
) -> Iterator[RunningCluster]:
    """`glmserve cluster up -f directory` until RUNNING (at most `within_s`), then `cluster down`,
    which must leave nothing behind."""
    if os.geteuid() != 0:
        pytest.skip("glmserve cluster needs root (network namespaces); CI runs as root")
    create_tiny(default_cache_dir())  # nothing to do when it is built already
    # Before the cluster starts: this machine cannot hold its engines and another one.
    offline = run_offline(
        {"model": str(default_cache_dir()), "greedy": list(GREEDY_PROMPTS), "max_tokens": GREEDY_MAX_TOKENS,
         "max_model_len": 8192, "top2": True},
        tmp_path_factory.mktemp("offline"),
    )  # fmt: skip
    shm_before = shm()
    log = tmp_path_factory.mktemp("cluster") / "up.log"
    started = time.monotonic()
    with log.open("w") as err:
        process = subprocess.Popen(
            [*GLMSERVE, "cluster", "up", "-f", str(directory), "--volume", f"{MODELS_CLAIM}={MODELS}"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert process.stdout is not None
        if within_s is not None and not select.select([process.stdout], [], [], within_s)[0]:
            pytest.fail(f"cluster up was not RUNNING within {within_s:.0f} s:\n{log.read_text()[-6000:]}")
        line = process.stdout.readline()  # the base URL, printed once RUNNING (its own line)
        if not line.startswith("http://"):
            process.wait(timeout=60)
            pytest.fail(f"cluster up failed (exit {process.returncode}):\n{log.read_text()[-6000:]}")
        cluster = RunningCluster(
            line.strip(), example_api_keys(directory), process, log, time.monotonic() - started, offline
        )
        print(f"\ncluster up: RUNNING after {cluster.started_s:.0f} s at {cluster.base_url} (log {log})")
        yield cluster
    finally:
        down = glmserve("cluster", "down", check=False, timeout=300)
        process.wait(timeout=120)
        assert down.returncode == 0, down.stderr
        assert not netns.leftover_namespaces()
        assert not netns.leftover_links()
        assert not (shm() - shm_before), f"/dev/shm files left: {shm() - shm_before}"


class Clusters:
    """The package's one running cluster (this machine cannot hold two): `up()` of another example
    takes the running one down first."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._factory = tmp_path_factory
        self._running: tuple[Path, contextlib.ExitStack, RunningCluster] | None = None

    def up(self, directory: Path, within_s: float | None = None) -> RunningCluster:
        if self._running is not None and self._running[0] == directory:
            return self._running[2]
        self.down()
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(cluster_up(directory, self._factory, within_s))
            self._running = (directory, stack.pop_all(), cluster)
        return cluster

    def down(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            running[1].close()


# Package scope: the cluster is gone before the next package's local stacks start (this machine
# cannot hold both).
@pytest.fixture(scope="package")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    found = Clusters(tmp_path_factory)
    try:
        yield found
    finally:
        found.down()


@pytest.fixture
def tiny_cluster(clusters: Clusters) -> RunningCluster:
    """examples/cluster-tiny, RUNNING; started by the first test that asks, shared by the rest."""
    return clusters.up(EXAMPLE)
