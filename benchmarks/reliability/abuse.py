"""The abuse cases: a body far over the cap, JSON nested 100,000 deep, a client guessing API keys;
each refused with its 4xx while another tenant's probes keep being served."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

from benchmarks.reliability.clients import MODEL, Probes, client, with_probes
from benchmarks.reliability.report import Row
from benchmarks.reliability.stack import Stack

DEEP = b'{"model":"m","messages":[{"role":"user","content":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
ATTEMPTS = 5
GUESSES = 20
GUESSER = "127.0.0.3"  # its own loopback address: the throttle is per client address


def _declared_body_status(port: int, key: str, mib: int) -> int:
    """Sends only the head of a request declaring a `mib` MiB body; the status that comes back."""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {mib << 20}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(head)
        return int(raw.recv(65536).split(b"\r\n", 1)[0].split()[1])


async def _oversized(stack: Stack) -> list[int]:
    return [
        await asyncio.to_thread(_declared_body_status, stack.port, stack.keys["oversized"], 64) for _ in range(ATTEMPTS)
    ]


async def _deep_json(stack: Stack) -> list[int]:
    async with client(stack.base, stack.keys["deep-json"]) as http:
        headers = {"content-type": "application/json"}
        return [
            (await http.post("/chat/completions", content=DEEP, headers=headers)).status_code for _ in range(ATTEMPTS)
        ]


async def _guesses(stack: Stack) -> list[int]:
    """GUESSES wrong keys, then the right one, from one address; the throttle answers 429 to both."""
    statuses = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for key in [*(f"sk-guess-{i}" for i in range(GUESSES)), stack.keys["failed-keys"]]:
        async with client(stack.base, key, local_address=GUESSER) as http:
            statuses.append((await http.post("/chat/completions", json=body)).status_code)
    return statuses


CASES: dict[str, tuple[str, Callable[[Stack], Awaitable[list[int]]]]] = {
    "oversized": ("body declaring 64 MiB (cap 16)", _oversized),
    "deep-json": ("JSON nested 100,000 deep", _deep_json),
    "failed-keys": (f"{GUESSES} wrong API keys, then a right one", _guesses),
}


def abuse(stack: Stack, tenant: str) -> Row:
    """One abuse case; the probes are another client (127.0.0.1) of the case's tenant."""
    name, send = CASES[tenant]

    async def run() -> tuple[list[int], Probes]:
        async with client(stack.base, stack.keys[tenant]) as http:
            return await with_probes(http, send(stack))

    started = time.monotonic()
    statuses, probes = asyncio.run(run())
    row = Row(name, sent=len(statuses) + len(probes.answers))
    row.failed.update(str(s) for s in statuses if s != 200)
    served = sum(1 for _, status, _ in probes.answers if status == 200)
    row.completed = served + statuses.count(200)
    row.failed.update(str(status or "no answer") for _, status, _ in probes.answers if status != 200)
    row.recovery_s = probes.outage_after(started)
    row.delivered = sum(n for _, _, n in probes.answers)
    time.sleep(1)
    row.billed = stack.billed(tenant)
    row.billed_wrongly = row.billed != row.delivered
    row.note = f"another client's probes: {served}/{len(probes.answers)} served meanwhile"
    return row
