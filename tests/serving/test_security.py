"""The session stack's security from outside: its HTTPS refuses old protocols and weak suites, and
no API key, valid or not, reaches any log file the stack wrote, any span it exported, any metric
or any error body."""

from __future__ import annotations

import re
import secrets
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from glmserve.common import metrics, tracing
from tests.conftest import session_processes
from tests.serving.conftest import Stack
from tests.serving.tenants import KEYS
from tests.serving.test_tls import documented_ciphers

pytestmark = pytest.mark.slow
MODEL = "glm-4.6-tiny"


def _handshake(stack: Stack, configure: object) -> tuple[str, str]:
    """(protocol, cipher) the ingress agrees to with a client `configure`d so; raises SSLError if none."""
    url = urlsplit(stack.base_url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(stack.cert)
    configure(context)  # type: ignore[operator]
    with (
        socket.create_connection((url.hostname, url.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=url.hostname) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[1], cipher[0]


def _only(version: ssl.TLSVersion, ciphers: str | None = None) -> object:
    def configure(context: ssl.SSLContext) -> None:
        # The client's own floor would refuse before asking: lower it, so that the server must.
        context.set_ciphers(f"{ciphers or 'ALL'}:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = version

    return configure


def test_the_ingress_speaks_tls_1_2_and_1_3_with_the_documented_ciphers_only(stack: Stack) -> None:
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError):
            _handshake(stack, _only(old))
    with pytest.raises(ssl.SSLError):  # a SHA-1 suite, which TLS 1.2 would allow
        _handshake(stack, _only(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA"))
    documented = documented_ciphers()
    for version, name in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
        protocol, cipher = _handshake(stack, _only(version))
        assert protocol == name and cipher in documented


def _stack_files(stack: Stack) -> list[Path]:
    """Every file the stack wrote a log to: `glmserve up`'s output, its router's directory, its Ray
    session's logs (found from the processes of its session, not from /tmp/ray, which other
    stacks share)."""
    processes = "\n".join(session_processes(stack.sid))
    ray_logs = re.search(r"gcs_server --log_dir=(\S+)", processes)
    router_config = re.search(r"router serve --config (\S+)", processes)
    assert ray_logs and router_config, processes
    dirs = [Path(ray_logs.group(1)), Path(router_config.group(1)).parent]
    return [stack.log, *(f for d in dirs for f in d.rglob("*") if f.is_file())]


def test_no_api_key_reaches_a_log_a_span_a_metric_or_an_error_body(stack: Stack) -> None:
    assert stack.traces is not None
    valid = KEYS["test"]
    probes = {"valid": valid, "unknown": f"sk-test-{secrets.token_hex(12)}", "over-limit": KEYS["rpm-probe"]}
    seen: list[str] = []  # every response body and metrics exposition
    spans_before = len(stack.traces.spans)

    client = stack.client(valid, max_retries=0)
    client.completions.create(model=MODEL, prompt="the key must not leak", max_tokens=4)
    chat = [{"role": "user", "content": "hello"}]
    for chunk in client.chat.completions.create(model=MODEL, messages=chat, max_tokens=4, stream=True):
        seen.append(chunk.model_dump_json())
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    statuses: dict[str, list[int]] = {}
    for name, key in probes.items():
        # From its own loopback address: these failed keys would get the other tests' client
        # (127.0.0.1) throttled by the ingress's failed-key limit.
        transport = httpx.HTTPTransport(
            local_address="127.0.0.3", verify=ssl.create_default_context(cafile=str(stack.cert))
        )
        with httpx.Client(transport=transport, timeout=60) as http:
            attempts = [{"authorization": f"Bearer {key}"}, {"authorization": key}, {"x-api-key": key}]
            for headers in attempts * (4 if name == "over-limit" else 1):  # past its 3 requests a minute
                reply = http.post(f"{stack.base_url}/completions", json=body, headers=headers)
                statuses.setdefault(name, []).append(reply.status_code)
                seen.append(reply.text)
                seen.extend(f"{k}: {v}" for k, v in reply.headers.items())
    assert statuses["valid"] == [200, 401, 401]
    assert statuses["unknown"] == [401, 401, 401]
    assert 429 in statuses["over-limit"]

    router_metrics = re.search(r"router: \S+ \(metrics (\S+)\)", stack.log.read_text())
    assert router_metrics
    with stack.http() as http:
        for url in (f"{stack.root}/metrics", stack.metrics_url, router_metrics.group(1)):
            seen.append(http.get(url).raise_for_status().text)
    # The engines registered with the router, and it routed the ingress's requests: both sent its token.
    families = {f.name: f for f in text_string_to_metric_families(seen[-1])}
    assert sum(sample.value for sample in families[metrics.ROUTER_WORKERS.name].samples) >= 1

    spans = stack.traces.wait_until(
        lambda got: any(s.attributes.get(tracing.TENANT) == "test" for s in got[spans_before:])
    )
    time.sleep(3)  # the last batches of spans and of log lines
    spans = list(stack.traces.spans)
    assert any(s.service == "glmserve-router" and s.name == "route" for s in spans[spans_before:])
    files = _stack_files(stack)
    assert len(files) > 10 and stack.log.stat().st_size > 0
    texts = {str(f): f.read_bytes().decode(errors="replace") for f in files}
    texts |= {f"span {s.service}/{s.name}": repr(s) for s in spans}
    texts |= {f"reply/metrics {i}": text for i, text in enumerate(seen)}
    # A key's random tail: a key cut short (a "prefix for debugging") still matches.
    leaks = {(name, where) for name, key in probes.items() for where, text in texts.items() if key[-16:] in text}
    assert leaks == set()
    assert len(spans) > spans_before and sum(map(len, texts.values())) > 100_000
