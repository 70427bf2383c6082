"""Three times what the stack accepts at once, sustained: the excess is refused with 503 (or 429)
and `Retry-After`, never queued without bound; the ingress, engine and router processes stay the
same processes with bounded memory; and the stack serves normally once the load stops."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter

import httpx
import psutil
import pytest

from benchmarks.loadgen import RequestResult, closed_loop
from tests.helpers.stack_processes import StackProcess, stack_processes
from tests.serving.conftest import MAX_ONGOING, MAX_QUEUED, Stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
CLIENTS = 3 * (MAX_ONGOING + MAX_QUEUED)  # 3x what the engine runs and queues at once
MAX_TOKENS = 16
ROUND_S = 12.0
# Between two identical overload rounds a process's RSS may move by allocator noise, not by
# what the load holds (requests, queues, buffers): the first round touches every page the load
# needs (the engine's KV cache among them), so growth in the second would be growth per request.
RSS_GROWTH_LIMIT = 64 << 20


BODY = {"model": MODEL, "messages": [{"role": "user", "content": "count the sheep"}], "max_tokens": MAX_TOKENS,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip


async def _streams(stack: Stack, clients: int, seconds: float) -> list[RequestResult]:
    """`clients` closed-loop streams for `seconds`; a refused client retries 0.2 s later."""
    headers = {"authorization": f"Bearer {stack.api_key}"}
    limits = httpx.Limits(max_connections=clients)
    tls = ssl.create_default_context(cafile=str(stack.cert))
    async with httpx.AsyncClient(verify=tls, timeout=120, headers=headers, limits=limits) as client:
        return await closed_loop(client, f"{stack.base_url}/chat/completions", BODY, clients=clients, seconds=seconds)


def _by_pid(processes: list[StackProcess]) -> dict[int, StackProcess]:
    return {p.pid: p for p in processes}


def test_three_times_capacity_is_shed_with_retry_after_and_memory_stays_bounded(stack: Stack) -> None:
    before = _by_pid(stack_processes(stack.sid))
    assert {p.role for p in before.values()} == {"ingress", "engine replica", "engine core", "router"}, before
    first = asyncio.run(_streams(stack, CLIENTS, ROUND_S))
    after_first = _by_pid(stack_processes(stack.sid))
    second = asyncio.run(_streams(stack, CLIENTS, ROUND_S))
    after_second = _by_pid(stack_processes(stack.sid))

    # Nothing crashed or was restarted: the same processes, the stack's own included.
    assert after_second.keys() == before.keys()
    assert psutil.pid_exists(stack.sid)
    answers = first + second
    statuses = Counter(r.status for r in answers)
    print(f"{len(answers)} requests from {CLIENTS} clients: {dict(statuses)}")
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] >= MAX_ONGOING and statuses[503] + statuses[429] > 0
    for r in answers:
        if r.status == 200:
            assert r.output_tokens == MAX_TOKENS  # an admitted request is served whole
        else:
            assert r.retry_after is not None and int(r.retry_after) >= 1
    for pid, process in after_second.items():
        growth = process.rss_bytes - after_first[pid].rss_bytes
        print(f"{process.role} {pid}: RSS {before[pid].rss_bytes >> 20} MiB before, "
              f"{after_first[pid].rss_bytes >> 20} after one round, {process.rss_bytes >> 20} after two")  # fmt: skip
        assert growth < RSS_GROWTH_LIMIT, (process, growth)

    # Serves normally once the load stops.
    (alone,) = asyncio.run(_streams(stack, 1, 0.1))
    assert (alone.status, alone.output_tokens) == (200, MAX_TOKENS)
