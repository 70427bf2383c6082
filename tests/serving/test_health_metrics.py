"""Operations endpoints: /health and Prometheus /metrics."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import session_processes
from tests.serving.conftest import Stack

pytestmark = pytest.mark.slow


def test_health(stack: Stack) -> None:
    with stack.http() as http:
        r = http.get(f"{stack.root}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_metrics_count_requests_and_tokens(stack: Stack) -> None:
    client = stack.client()
    client.chat.completions.create(model="glm-4.6-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    with stack.http() as http:
        text = http.get(f"{stack.root}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["glmserve_ingress_requests"]
    ok = [s for s in requests.samples if s.labels.get("status") == "200" and s.name.endswith("_total")]
    assert ok and sum(s.value for s in ok) >= 1
    tokens = families["glmserve_ingress_tokens"]
    assert any(s.labels["direction"] == "output" and s.value >= 3 for s in tokens.samples)
    ttft = families["glmserve_ingress_time_to_first_token_seconds"]
    assert any(s.name.endswith("_count") and s.value >= 1 for s in ttft.samples)


def test_the_stack_runs_at_normal_priority(stack: Stack) -> None:
    """Ray starts its workers at nice 15; a local server's engine would then yield the CPU to any
    other process on the machine, a benchmark's own client included."""
    served = []
    for line in session_processes(stack.sid):
        pid = int(line.split()[1])
        with contextlib.suppress(OSError):  # gone meanwhile
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            if name.startswith(("VLLM::", "ray::ServeRepli")):
                served.append((name, os.getpriority(os.PRIO_PROCESS, pid)))
    assert any(name == "VLLM::Worker" for name, _ in served), served
    assert all(nice == 0 for _, nice in served), served
