"""The router under test as its own process (`glmserve router serve`), and its /metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from benchmarks.baseline import ROOT
from glmserve.common.ports import free_port

# `python -c` this, then the log file, then glmserve's arguments: glmserve's CLI, with each garbage
# collection that pauses the router for over a millisecond logged (wall time at its end, seconds it
# took, generation). Inline code, not a module: today's router runs from a copy of a tree that may
# not have one.
_GC_LOGGING = """
import gc, runpy, sys, time
log, started = open(sys.argv[1], "a", buffering=1), [0.0]
def pause(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    elif (took := time.perf_counter() - started[0]) > 1e-3:
        log.write(f"{time.time()} {took} {info['generation']}\\n")
gc.callbacks.append(pause)
sys.argv = ["glmserve", *sys.argv[2:]]
runpy.run_module("glmserve.cli.main", run_name="__main__")
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    return [
        (float("inf") if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    ]


def bucket_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile over the observations between two scrapes."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for le, cumulative in counts:
        if cumulative >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = le, cumulative
    return lower


def percentiles(samples: list[float]) -> dict[str, float]:
    a = np.array(samples) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "n": len(a),
    }


class RouterProcess:
    """`tree`: the directory whose glmserve package runs (default this one; a baseline's copy for
    today's code). `admission`: the config's admission section (default none: routing only)."""

    def __init__(self, tree: Path = ROOT, admission: dict[str, Any] | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self._dir = tempfile.TemporaryDirectory()
        config = Path(self._dir.name) / "router.yaml"
        settings = {
            "host": "127.0.0.1",
            "metrics_port": self.metrics_port,
            "workers": {"heartbeat_interval_s": 60, "lease_s": 3600, "forget_after_s": 7200},
        }
        config.write_text(yaml.safe_dump(settings | ({"admission": admission} if admission else {})))
        env = os.environ | {"PYTHONPATH": str(tree)}
        self._gc_log = Path(self._dir.name) / "gc.log"
        self._gc_log.touch()
        command = [sys.executable, "-c", _GC_LOGGING, str(self._gc_log), "router", "serve", "--config", str(config)]
        # `python -c` puts the working directory first on sys.path: run in `tree`, or today's router
        # would import this tree's glmserve.
        self.proc = subprocess.Popen([*command, "--port", str(self.port)], env=env, cwd=tree, stderr=subprocess.DEVNULL)
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)

    def cpu_s(self) -> float:
        """CPU seconds the router process has used (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def gc_pauses(self, start: float, end: float) -> list[float]:
        """Seconds each garbage collection of over 1 ms paused the router, of those that ended between
        the wall times `start` and `end`."""
        pauses = []
        for line in self._gc_log.read_text().splitlines():
            at, took, _ = line.split()
            if start <= float(at) <= end:
                pauses.append(float(took))
        return pauses

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._dir.cleanup()
