"""A small OpenAI streaming load generator: TTFT, inter-token latency, throughput.

Seeded prompts, fixed output lengths (`ignore_eos`), a fixed number of requests at a fixed
concurrency, so two servers can be compared under exactly the same load.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

WORDS = ("agent", "repository", "function", "test", "deploy", "cluster", "token", "cache", "expert", "router")


def prompts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


@dataclass(slots=True)
class RequestResult:
    ttft_s: float
    itls_s: list[float]
    e2e_s: float
    output_tokens: int
    status: int
    retry_after: str | None = None  # what a refusal asked the client to wait


@dataclass(slots=True)
class LoadResult:
    wall_s: float
    requests: list[RequestResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.requests if r.status == 200]
        ttft = sorted(r.ttft_s for r in ok)
        itl = sorted(x for r in ok for x in r.itls_s)
        tokens = sum(r.output_tokens for r in ok)
        return {
            "requests": len(self.requests),
            "ok": len(ok),
            "wall_s": self.wall_s,
            "output_tokens": tokens,
            "throughput_tok_s": tokens / self.wall_s if self.wall_s else 0.0,
            "ttft_p50_ms": 1000 * percentile(ttft, 50),
            "ttft_p90_ms": 1000 * percentile(ttft, 90),
            "ttft_p99_ms": 1000 * percentile(ttft, 99),
            "itl_p50_ms": 1000 * percentile(itl, 50),
            "itl_p90_ms": 1000 * percentile(itl, 90),
            "itl_p99_ms": 1000 * percentile(itl, 99),
            "itl_mean_ms": 1000 * statistics.fmean(itl) if itl else 0.0,
        }

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "requests": [asdict(r) for r in self.requests]}


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


async def stream_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    """One streamed request (`body` with `stream: true`): time to first token, each inter-token gap."""
    start = time.perf_counter()
    first: float | None = None
    last = start
    itls: list[float] = []
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            elapsed = time.perf_counter() - start
            return RequestResult(0.0, [], elapsed, 0, response.status_code, response.headers.get("retry-after"))
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            delta = choices[0].get("delta", {}) if choices else {}
            text = choices[0].get("text") if choices else None
            if not (delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or text):
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                itls.append(now - last)
            last = now
    end = time.perf_counter()
    return RequestResult((first or end) - start, itls, end - start, tokens, 200)


async def run_load(
    base_url: str,
    model: str,
    texts: list[str],
    *,
    concurrency: int,
    max_tokens: int,
    verify: str | bool = True,
    api_key: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    url = f"{base_url}/chat/completions"
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    result = LoadResult(0.0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            text = queue.get_nowait()
            body = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,  # every request produces exactly max_tokens tokens
                "stream": True,
                "stream_options": {"include_usage": True},  # exact token counts, whatever the chunking
            }
            result.requests.append(await stream_request(client, url, body))
            if progress:
                progress(len(result.requests), len(texts))

    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(timeout=600, limits=limits, verify=verify, headers=headers) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - start
    return result


async def closed_loop(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], *, clients: int, seconds: float, backoff_s: float = 0.2
) -> list[RequestResult]:
    """`clients` streams of `body` (streamed), each sending its next request as soon as its last
    ended, or `backoff_s` after a refusal (an impatient client: the offered load stays put), for
    `seconds`. `client` must allow `clients` connections."""
    deadline = time.perf_counter() + seconds
    results: list[RequestResult] = []

    async def one_client() -> None:
        while time.perf_counter() < deadline:
            results.append(await stream_request(client, url, body))
            if results[-1].status != 200:
                await asyncio.sleep(backoff_s)

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return results
