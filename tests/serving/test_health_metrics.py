"""Operations endpoints: /health and Prometheus /metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

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
