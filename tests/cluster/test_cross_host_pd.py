"""Prefill on one host, decode on another: the KV cache crosses the bridge over NIXL (UCX on TCP)."""

from __future__ import annotations

import time
import urllib.request

import pytest
from openai import OpenAI

from glmserve.cluster import netns
from glmserve.common.catalogue import get_model
from tests.cluster.conftest import RunningCluster

pytestmark = pytest.mark.slow

NIXL_BYTES = "ray_vllm_nixl_bytes_transferred_sum"


def _metric_sum(ip: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _long_prompt(words: int, seed: str) -> str:
    return " ".join(f"{seed}{i % 97}" for i in range(words))


def test_kv_crosses_the_veth_from_the_prefill_host_to_the_decode_host(tiny_cluster: RunningCluster) -> None:
    prefill = tiny_cluster.hosts(pool="prefill")[0]
    decode = [h["ip"] for h in tiny_cluster.hosts(pool="decode")]  # the router picks one of them
    assert prefill["ip"] not in decode
    client = OpenAI(base_url=tiny_cluster.base_url, api_key=tiny_cluster.pro_key, timeout=300)

    def nixl_bytes() -> float:
        return sum(_metric_sum(ip, NIXL_BYTES) for ip in decode)

    before_nixl = nixl_bytes()
    # The machine's end of a veth receives what the host sends.
    before_sent, _ = netns.link_bytes(prefill["veth"])
    reply = client.completions.create(
        model=tiny_cluster.model, prompt=_long_prompt(600, "kv"), max_tokens=4, temperature=0
    )
    assert reply.usage is not None
    prompt_tokens = reply.usage.prompt_tokens
    kv = prompt_tokens * get_model(tiny_cluster.model).kv_bytes_per_token()
    # Ray exports the engines' metrics every few seconds.
    deadline = time.monotonic() + 60
    while (moved := nixl_bytes() - before_nixl) < 0.9 * kv and time.monotonic() < deadline:
        time.sleep(2)
    sent, _ = netns.link_bytes(prefill["veth"])
    # NIXL counts whole blocks, so it may report more than the prompt's KV (measured: 5,242,880 B
    # for 2,323 tokens of 2,048 B); the prompt's KV itself left the prefill host by its veth (other
    # traffic only adds to that counter).
    assert moved >= 0.9 * kv, f"NIXL moved {moved} B for {prompt_tokens} prompt tokens ({kv:.0f} B of KV)"
    assert sent - before_sent >= kv, f"the prefill host sent {sent - before_sent} B; the prompt's KV is {kv:.0f} B"


def test_a_repeated_prefix_is_routed_to_the_engine_that_holds_it(tiny_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=tiny_cluster.base_url, api_key=tiny_cluster.pro_key, timeout=300)
    prefix = _long_prompt(300, "shared")
    client.completions.create(model=tiny_cluster.model, prompt=prefix + " first", max_tokens=2, temperature=0)
    again = client.completions.create(model=tiny_cluster.model, prompt=prefix + " second", max_tokens=2, temperature=0)
    assert again.usage is not None
    details = again.usage.prompt_tokens_details
    assert details is not None
    assert details.cached_tokens and details.cached_tokens >= 0.5 * again.usage.prompt_tokens
