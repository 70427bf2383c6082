"""Three times the stack's capacity: the excess is refused with `Retry-After`, memory stays
bounded, and admitted requests' p99 TTFT is compared with a light load's in alternating rounds
(a slow spell of the shared machine lands in both)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import RequestResult, percentile
from benchmarks.reliability import breakdown
from benchmarks.reliability.clients import client, closed_loop, probe
from benchmarks.reliability.report import Row
from benchmarks.reliability.stack import MAX_ONGOING, REPLICAS, Stack
from tests.helpers.stack_processes import stack_processes

CAPACITY = REPLICAS * MAX_ONGOING  # requests the engines run at once
LIGHT_CLIENTS = REPLICAS  # one stream per replica: nothing waits
MAX_TOKENS = 16


def p99_ms(results: list[RequestResult]) -> float:
    """p99 TTFT of the admitted requests."""
    return 1000 * percentile(sorted(r.ttft_s for r in results if r.status == 200), 99)


# Each load: (tenant, closed-loop streams). The light load runs one stream per replica (nothing
# waits); at capacity every slot is busy and nothing is refused; 3x is the overload.
LOADS = {"light": ("light", LIGHT_CLIENTS), "at capacity": ("light", CAPACITY), "3x": ("overload", 3 * CAPACITY)}


@dataclass
class Overload:
    runs: dict[str, list[RequestResult]] = field(default_factory=lambda: {load: [] for load in LOADS})
    per_round: list[dict[str, float]] = field(default_factory=list)  # p99 TTFT ms of each load
    rss_mib: dict[str, dict[str, int]] = field(default_factory=dict)  # "role pid" -> {before, after}
    spent: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {load: [] for load in LOADS})  # per round
    profile: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # process -> its top frames at 3x

    @property
    def loaded(self) -> list[RequestResult]:
        return self.runs["3x"]

    def ratio(self, baseline: str) -> float:
        """3x's p99 TTFT over `baseline`'s."""
        return p99_ms(self.loaded) / p99_ms(self.runs[baseline])

    def to_json(self) -> dict[str, Any]:
        return {
            "capacity": CAPACITY, "loads": {load: clients for load, (_, clients) in LOADS.items()},
            "p99_ttft_ms": {load: p99_ms(runs) for load, runs in self.runs.items()},
            "p99_ratio_vs_light": self.ratio("light"), "p99_ratio_vs_capacity": self.ratio("at capacity"),
            "p99_ttft_ms_per_round": self.per_round, "rss_mib": self.rss_mib, "spent_per_round": self.spent,
            "profile_at_3x": self.profile,
            "ttft_ms": {load: [1000 * r.ttft_s for r in runs if r.status == 200] for load, runs in self.runs.items()},
        }  # fmt: skip


def _rss(stack: Stack) -> dict[str, int]:
    return {f"{p.role} {p.pid}": p.rss_bytes >> 20 for p in stack_processes(stack.proc.pid)}


def overload(
    stack: Stack, seconds: float, rounds: int, log: Any, profile_dir: Path | None = None
) -> tuple[Row, Overload]:
    """`rounds` alternations of the LOADS, `seconds` of each in all; with `profile_dir`, py-spy
    records the ingress and the router through the first round's 3x load."""
    result = Overload()
    asyncio.run(closed_loop(stack.base, stack.keys["light"], CAPACITY, 5, 4))  # warm-up: every slot once
    before = _rss(stack)
    for k in range(1, rounds + 1):
        p99: dict[str, float] = {}
        for load, (tenant, clients) in LOADS.items():
            log(f"overload round {k}/{rounds}: {load}, {clients} streams (capacity {CAPACITY})")
            spies = (
                breakdown.profile(stack, seconds / rounds, profile_dir)
                if profile_dir and k == 1 and load == "3x"
                else []
            )
            start = breakdown.snapshot(stack)
            load_run = closed_loop(stack.base, stack.keys[tenant], clients, seconds / rounds, MAX_TOKENS)
            runs, watched = asyncio.run(breakdown.watched(load_run, stack.base))
            spent = breakdown.spent(start, breakdown.snapshot(stack)) | watched
            refusals = [r.e2e_s for r in runs if r.status != 200]
            spent["client_refusal_ms"] = round(1000 * sum(refusals) / len(refusals), 1) if refusals else 0.0
            result.spent[load].append(spent)
            for spy in spies:
                spy.wait(timeout=60)
            result.runs[load] += runs
            p99[load] = round(p99_ms(runs), 1)
        result.per_round.append(p99)
    if profile_dir is not None:
        result.profile = {p.stem: breakdown.top_frames(p) for p in sorted(profile_dir.glob("*.txt"))}
    stopped = time.monotonic()
    status, _ = asyncio.run(_probe(stack))
    recovery = time.monotonic() - stopped if status == 200 else float("inf")
    after = _rss(stack)
    result.rss_mib = {name: {"before": mib, "after": after.get(name, -1)} for name, mib in before.items()}

    row = Row(f"{3 * CAPACITY} streams: 3x capacity", sent=len(result.loaded), recovery_s=recovery)
    row.completed = sum(1 for r in result.loaded if r.status == 200)
    row.failed = Counter(str(r.status) for r in result.loaded if r.status != 200)
    row.lost = sum(1 for r in result.loaded if r.status == 200 and r.output_tokens != MAX_TOKENS)
    row.delivered = sum(r.output_tokens for r in result.loaded if r.status == 200)
    time.sleep(1)
    row.billed = stack.billed("overload")
    row.billed_wrongly = row.billed != row.delivered
    refused = [r for r in result.loaded if r.status != 200]
    with_retry_after = sum(1 for r in refused if r.retry_after and int(r.retry_after) >= 1)
    survived = after.keys() == before.keys()
    growth = max(after[name] - mib for name, mib in before.items()) if survived else None
    row.note = f"Retry-After on {with_retry_after}/{len(refused)} refusals; " + (
        f"same processes, RSS growth at most {growth} MiB" if survived else "A PROCESS DIED OR WAS REPLACED"
    )
    return row, result


async def _probe(stack: Stack) -> tuple[int, int]:
    async with client(stack.base, stack.keys["light"]) as http:
        return await probe(http)
