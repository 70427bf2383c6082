"""Plan priority under saturation: a premium plan's TTFT while a batch plan floods the engine.

    python -m benchmarks.priority [--duration 30] [--rounds 3] [--premium 2] [--overload 3]

Measures, against one `glmserve up` (in-memory limits, two unlimited plans: premium and batch),
the premium plan's P90 TTFT alone (`--premium` concurrent streams), then with batch streams
added until the offered load is `--overload` times the engine's capacity. The two phases
alternate for `--rounds` rounds (`--duration` seconds of each in all), so a slow spell of this
shared machine lands in both instead of in one. Goal: premium P90 TTFT under overload within
1.5x of unloaded. Writes benchmarks/results/priority.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.loadgen import percentile
from benchmarks.results_io import markdown_table, write
from benchmarks.servers import launch, samples, stop, wait_ready
from glmserve.admission.slots import SHARE
from glmserve.common.metrics import INGRESS_SHARE_SCALE
from glmserve.common.tenancy import hash_api_key

MODEL = "glm-4.6-tiny"
KEYS = {"premium": "sk-bench-premium-0123456789", "batch": "sk-bench-batch-0123456789"}
MAX_ONGOING = 8


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def tenants_file(directory: Path) -> Path:
    plans = [{"name": "premium", "priority": "premium"}, {"name": "batch", "priority": "batch"}]
    tenants = [{"id": p, "plan": p, "apiKeys": [{"sha256": hash_api_key(k)}]} for p, k in KEYS.items()]
    path = directory / "tenants.yaml"
    path.write_text(yaml.safe_dump({"plans": plans, "tenants": tenants}))
    return path


async def _one(client: httpx.AsyncClient, url: str, plan: str, max_tokens: int) -> tuple[int, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "summarise the repository " * 20}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True}  # fmt: skip
    start = time.perf_counter()
    async with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {KEYS[plan]}"}) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, 0.0
        ttft = 0.0
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and not ttft:
                ttft = time.perf_counter() - start
        return 200, ttft


async def run(
    base: str, streams: dict[str, int], duration: float, max_tokens: int
) -> dict[str, list[tuple[int, float]]]:
    url = f"{base}/chat/completions"
    deadline = time.monotonic() + duration
    results: dict[str, list[tuple[int, float]]] = {plan: [] for plan in streams}

    async def stream(client: httpx.AsyncClient, plan: str) -> None:
        while time.monotonic() < deadline:
            status, ttft = await _one(client, url, plan, max_tokens)
            results[plan].append((status, ttft))
            if status != 200:
                await asyncio.sleep(0.2)  # a shed client backs off as Retry-After asks

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        await asyncio.gather(*(stream(client, plan) for plan, n in streams.items() for _ in range(n)))
    return results


def share_scale(port: int) -> float:
    """The ingress's pace factor on lower classes' slot share (1.0 until it has one)."""
    return min((s.value for s in samples(f"http://127.0.0.1:{port}/metrics", INGRESS_SHARE_SCALE.name)), default=1.0)


def p90_ttft_ms(results: list[tuple[int, float]]) -> float:
    return 1000 * percentile(sorted(t for s, t in results if s == 200), 90)


def plot(runs: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    curves = {
        "premium alone": runs["unloaded"]["premium"],
        "premium, overloaded": runs["overloaded"]["premium"],
        "batch, overloaded": runs["overloaded"]["batch"],
    }
    for label, results in curves.items():
        ttft = sorted(1000 * t for s, t in results if s == 200)
        if ttft:
            ax.plot(ttft, [i / len(ttft) for i in range(len(ttft))], label=label)
    ax.set(xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT by plan under saturation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30, help="seconds of each phase, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the unloaded and overloaded phases")
    parser.add_argument("--premium", type=int, default=2, help="premium streams")
    parser.add_argument("--overload", type=float, default=3.0, help="offered load / capacity")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="glmserve-bench-"))
    port = 8301
    cmd = [
        str(Path(sys.executable).parent / "glmserve"), "up", "--port", str(port),
        "--tenants-file", str(tenants_file(workdir)),
        "--max-ongoing-requests", str(MAX_ONGOING), "--max-queued-requests", "64",
    ]  # fmt: skip
    log("starting glmserve up with a premium and a batch plan")
    with (workdir / "up.log").open("wb") as out:
        proc = launch(cmd, out)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc)
        base = f"http://127.0.0.1:{port}/v1"
        asyncio.run(run(base, {"premium": 2}, 5, 4))  # warm-up
        batch = max(1, round(args.overload * MAX_ONGOING) - args.premium)
        phases = {"unloaded": {"premium": args.premium}, "overloaded": {"premium": args.premium, "batch": batch}}
        rounds: list[dict[str, dict[str, list[tuple[int, float]]]]] = []
        scales: list[float] = []  # the pace factor at the end of each overloaded phase
        for k in range(1, args.rounds + 1):
            rounds.append({})
            for phase, streams in phases.items():
                log(f"round {k}/{args.rounds}: {phase} ({streams}; capacity {MAX_ONGOING} requests)")
                rounds[-1][phase] = asyncio.run(run(base, streams, args.duration / args.rounds, args.max_tokens))
            scales.append(round(share_scale(port), 3))
    finally:
        stop(proc)
    runs = {phase: {plan: [r for one in rounds for r in one[phase].get(plan, [])] for plan in streams}
            for phase, streams in phases.items()}  # fmt: skip
    unloaded, overloaded = runs["unloaded"], runs["overloaded"]
    base_p90, loaded_p90 = p90_ttft_ms(unloaded["premium"]), p90_ttft_ms(overloaded["premium"])
    ratio = loaded_p90 / base_p90
    per_round = [
        round(p90_ttft_ms(one["overloaded"]["premium"]) / p90_ttft_ms(one["unloaded"]["premium"]), 2) for one in rounds
    ]

    def counts(results: list[tuple[int, float]]) -> str:
        ok = sum(1 for s, _ in results if s == 200)
        return f"{ok}/{len(results)}"

    rows = [
        ["premium alone", counts(unloaded["premium"]), base_p90],
        ["premium, overloaded", counts(overloaded["premium"]), loaded_p90],
        ["batch, overloaded", counts(overloaded["batch"]), p90_ttft_ms(overloaded["batch"])],
    ]
    md = (
        f"# Plan priority under {args.overload}x overload ({MODEL} on CPU, capacity {MAX_ONGOING} requests)\n\n"
        + markdown_table(["traffic", "served/sent", "TTFT p90 ms"], rows)
        + f"\nPremium P90 TTFT overloaded/unloaded: **{ratio:.2f}x** (goal <= 1.5x), pooled over {args.rounds} "
        f"alternating rounds of {args.duration / args.rounds:.0f} s per phase; each round's own ratio: "
        f"{', '.join(f'{r:.2f}x' for r in per_round)}. Batch may fill at most "
        f"{SHARE['batch']:.0%} of the engine slots, times the pace factor while it slows the engines' inter-token "
        f"pace (factor at the end of each round: {', '.join(map(str, scales))}); the rest of its requests wait in "
        "the ingress's priority line (shed with 503 + Retry-After only when the line is full).\n"
    )
    data: dict[str, Any] = {"args": vars(args), "p90_ratio": ratio, "p90_ratio_per_round": per_round,
                            "share_scale_per_round": scales, "runs": runs}  # fmt: skip
    for path in write("priority", data, md, lambda p: plot(runs, p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
