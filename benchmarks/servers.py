"""Servers under test: started, awaited, read and stopped the same way by every benchmark.

A server runs in the benchmark's own session (its own process group, for a clean kill). A
session of its own would put it in its own Linux scheduler autogroup, and then the kernel
splits the cores between the load generator's group and the server's group instead of
between threads: on this 2-core machine that starved the server's relays behind its own
spinning engine threads. With `start_new_session=True` below, `python -m benchmarks.priority`
measured premium P90 TTFT ratios of 2.3x and 5.4x for code that measures 1.6x to 1.9x as is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def launch(cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def samples(url: str, name: str) -> list[Sample]:
    """The samples of metric `name` (with labels) that a Prometheus endpoint exposes now."""
    text = httpx.get(url, timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of metric `name`'s samples whose labels include `labels`."""
    return sum(s.value for s in samples(url, name) if all(s.labels.get(k) == v for k, v in labels.items()))
