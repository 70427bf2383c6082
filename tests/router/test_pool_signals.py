"""The pools' scaling signals the router exports: current, and 0 (not absent) when idle or empty."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from glmserve.router.types import Load, Usage
from tests.router.test_router_core import PROMPT, cache, make_router, query


def signals(router: object) -> dict[tuple[str, ...], float]:
    text = generate_latest(router.metrics.registry).decode()  # type: ignore[attr-defined]
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "glmserve_router_pool_requests":
                out[s.labels["role"], s.labels["state"]] = s.value
            elif s.name == "glmserve_router_pool_uncached_prompt_tokens":
                out[s.labels["role"], "uncached_prompt_tokens"] = s.value
            elif s.name == "glmserve_router_pool_replicas":
                out[s.labels["role"], "replicas"] = s.value
            elif s.name == "glmserve_router_pool_kv_cache_usage":
                out[s.labels["role"], "kv_cache_usage"] = s.value
    return out


def test_signals_follow_heartbeats_and_routed_prompts_then_read_zero_when_idle() -> None:
    router, _ = make_router([("p", "prefill"), ("a", "decode"), ("b", "decode")])
    router.heartbeat("a", Load(running=3, waiting=1, kv_cache_usage=0.5))
    router.heartbeat("b", Load(running=2, kv_cache_usage=0.25))
    router.route(query("r1"))
    router.sweep()
    now = signals(router)
    assert (now["decode", "running"], now["decode", "waiting"], now["decode", "queued"]) == (5, 1, 0)
    assert (now["decode", "kv_cache_usage"], now["prefill", "kv_cache_usage"]) == (0.375, 0)  # mean of replicas
    assert now["prefill", "uncached_prompt_tokens"] + now["decode", "uncached_prompt_tokens"] == len(PROMPT)
    assert (now["prefill", "replicas"], now["decode", "replicas"]) == (1, 2)
    router.complete("r1", "finished", Usage())
    for worker in ("a", "b"):
        router.heartbeat(worker, Load())
    router.sweep()
    idle = signals(router)
    assert (idle.pop(("prefill", "replicas")), idle.pop(("decode", "replicas"))) == (1, 2)
    assert set(idle.values()) == {0}
    assert len(idle) == 10  # 2 pools x (3 states + uncached tokens + KV use): all still there


def test_a_pool_whose_replicas_all_left_reads_zero_and_their_index_entries_are_gone() -> None:
    router, _ = make_router([("a", "decode")])
    router.heartbeat("a", Load(running=2, kv_cache_usage=0.5))
    cache(router, "a", PROMPT)
    router.sweep()
    assert (signals(router)["decode", "running"], signals(router)["decode", "replicas"]) == (2, 1)
    assert router.deregister("a")
    assert router.index.size() == 0
    router.sweep()
    empty = signals(router)
    assert empty["decode", "running"] == empty["decode", "replicas"] == empty["decode", "kv_cache_usage"] == 0


def costs(router: object) -> dict[tuple[str, str], float]:
    text = generate_latest(router.metrics.registry).decode()  # type: ignore[attr-defined]
    names = {"glmserve_router_worker_requests": "requests", "glmserve_router_worker_cached_blocks": "blocks"}
    return {
        (s.labels["worker"], names[s.name]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in names
    }


def test_each_workers_requests_and_cached_blocks_are_exported_until_it_leaves() -> None:
    router, _ = make_router([("a", "decode"), ("b", "decode")])
    router.heartbeat("a", Load(running=3, waiting=1))
    cache(router, "b", PROMPT)
    router.sweep()
    now = costs(router)
    assert (now["a", "requests"], now["a", "blocks"], now["b", "requests"]) == (4, 0, 0)
    assert now["b", "blocks"] == router.index.blocks("b") > 0
    assert router.deregister("a")
    router.sweep()
    assert {worker for worker, _ in costs(router)} == {"b"}
