"""What the tenants of the reliability report send: greedy streams that record every token id and
when it arrived, probes that ask for a short answer every half second, and the overload's
closed-loop streams."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks import loadgen
from benchmarks.loadgen import RequestResult

MODEL = "glm-4.6-tiny"
# Token ids in the answer (vLLM's return_token_ids): what the client got, counted in tokens.
GREEDY: dict[str, Any] = {"temperature": 0, "ignore_eos": True, "return_token_ids": True,
                          "thinking": {"type": "disabled"}}  # fmt: skip


@dataclass(slots=True)
class Streamed:
    status: int | str  # HTTP status; "error event" or "cut" for a stream that did not end with [DONE]
    ids: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each chunk with ids

    def stall_after(self, t: float) -> float:
        """The longest wait for the next token that began at or after `t` (0 if none did)."""
        times = [t, *(a for a in self.arrivals if a > t)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def client(base: str, key: str, *, local_address: str | None = None, timeout: float = 300) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=local_address) if local_address else None
    return httpx.AsyncClient(
        base_url=base, timeout=timeout, headers={"authorization": f"Bearer {key}"}, transport=transport,
        limits=httpx.Limits(max_connections=64),
    )  # fmt: skip


def chat(prompt: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, **GREEDY}
    return {**body, "stream": True, "stream_options": {"include_usage": True}} if stream else body


async def stream_ids(
    http: httpx.AsyncClient, prompt: str, max_tokens: int, *, on_token: Callable[[int], None] | None = None,
    hang_up_after: int | None = None,
) -> Streamed:  # fmt: skip
    """One greedy stream; `on_token(n)` after each chunk; the client leaves once it holds
    `hang_up_after` ids (status "hung up")."""
    async with http.stream("POST", "/chat/completions", json=chat(prompt, max_tokens, stream=True)) as r:
        if r.status_code != 200:
            await r.aread()
            return Streamed(r.status_code)
        got = Streamed("cut")
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                got.status = 200 if got.status == "cut" else got.status
                break
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                got.status = "error event"
            ids = [i for c in chunk.get("choices") or [] for i in c.get("token_ids") or []]
            if ids:
                got.ids += ids
                got.arrivals.append(time.monotonic())
                if on_token is not None:
                    on_token(len(got.ids))
            if hang_up_after is not None and len(got.ids) >= hang_up_after:
                got.status = "hung up"
                break
        return got


async def probe(http: httpx.AsyncClient) -> tuple[int, int]:
    """(status, output tokens) of one short answer; status 0: none came (refused, timed out)."""
    try:
        r = await http.post("/chat/completions", json=chat("ping", 2, stream=False), timeout=30)
    except httpx.HTTPError:
        return 0, 0
    return r.status_code, len(r.json()["choices"][0]["token_ids"]) if r.status_code == 200 else 0


@dataclass(slots=True)
class Probes:
    """Short answers asked one at a time, every `every_s` at most: (sent at, status, token ids)."""

    answers: list[tuple[float, int, int]] = field(default_factory=list)

    async def run(
        self, http: httpx.AsyncClient, stop: asyncio.Event, every_s: float = 0.5, settle_s: float = 90
    ) -> None:
        """Until `stop`, and then on (for up to `settle_s`) until one is answered: an outage's end is measured."""
        stopped_at = None
        while True:
            if stop.is_set():
                stopped_at = stopped_at or time.monotonic()
                if not self.answers or self.answers[-1][1] == 200 or time.monotonic() - stopped_at > settle_s:
                    return
            sent = time.monotonic()
            self.answers.append((sent, *await probe(http)))
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - sent)))

    def outage_after(self, t: float) -> float:
        """From the first failed probe sent after `t` to the next one answered (0 if none failed)."""
        failed_at = None
        for sent, status, _ in self.answers:
            if sent < t:
                continue
            if status != 200 and failed_at is None:
                failed_at = sent
            elif status == 200 and failed_at is not None:
                return sent - failed_at
        return 0.0 if failed_at is None else float("inf")


async def with_probes(http: httpx.AsyncClient, work: Awaitable[Any]) -> tuple[Any, Probes]:
    """`work`'s result, with probes running until it is done."""
    probes, stop = Probes(), asyncio.Event()
    task = asyncio.create_task(probes.run(http, stop))
    try:
        return await work, probes
    finally:
        stop.set()
        await task


async def closed_loop(base: str, key: str, clients: int, seconds: float, max_tokens: int) -> list[RequestResult]:
    """loadgen's closed loop of `clients` greedy streams of `max_tokens` tokens for `seconds`."""
    body = {**chat("count the sheep in the field", max_tokens, stream=True), "return_token_ids": False}
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients), headers=headers) as http:
        return await loadgen.closed_loop(http, f"{base}/chat/completions", body, clients=clients, seconds=seconds)
