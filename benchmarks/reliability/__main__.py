"""`python -m benchmarks.reliability [--overload-seconds 40] [--rounds 2] [--port 8311]
[--cases all|overload] [--profile-dir DIR]`.

One `glmserve up` (glm-4.6-tiny on CPU, 2 engine replicas, `--migration-limit 2
--stall-timeout-s 6`, glmserve's router admitting every request against plans in a real Redis)
goes through each fault and abuse case in turn: engine SIGKILL and SIGSTOP mid-stream, the router
killed and restarted, Redis stopped and restarted, clients hanging up, a 64 MiB body, 100,000-deep
JSON, a flood of wrong API keys, and 3x the engines' capacity. Each case is one row: requests
sent, completed, migrated, failed by status, recovery seconds, and whether a token was lost or
billed wrongly (the tenant's billed output tokens against the tokens delivered). The overload
case also measures admitted requests' p99 TTFT at 3x capacity against a light load's (goal:
within 1.5x) and against exactly capacity's, in alternating rounds, and where each load's time goes
(cores per process, the router's queue wait and refusals, a refusal's round trip; with
--profile-dir, py-spy records of the ingress and router at 3x). Writes
benchmarks/results/reliability.{json,md,png} (`--cases overload`: only the loads, to
reliability_overload.*).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.reliability import faults, stack
from benchmarks.reliability.abuse import abuse
from benchmarks.reliability.overload import CAPACITY, LOADS, Overload, overload, p99_ms
from benchmarks.reliability.report import Row, plot, table
from benchmarks.results_io import markdown_table, write

TENANTS = ["reference", "sigkill", "sigstop", "router", "redis", "disconnect", "oversized", "deep-json",
           "failed-keys", "light", "overload"]  # fmt: skip


def log(msg: str) -> None:
    print(f"[reliability] {msg}", file=sys.stderr, flush=True)


def run_cases(up: stack.Stack, workdir: Path, args: argparse.Namespace) -> tuple[list[Row], Overload]:
    """Every case on one stack (or only the overload's, `--cases overload`); the overload first, on
    the stack as started (its TTFT and memory are then not those of replicas that a fault replaced)."""
    log(f"light, at-capacity and 3x loads: {args.rounds} rounds, {args.overload_seconds:g} s of each load in all")
    overloaded, measured = overload(up, args.overload_seconds, args.rounds, log, args.profile_dir)
    if args.cases == "overload":
        return [overloaded], measured
    log("uninterrupted greedy runs (the reference for every migrated stream)")
    expected = asyncio.run(faults.reference(up))
    rows: list[Row] = []
    restarted: subprocess.Popen[bytes] | None = None
    try:
        log("engine SIGKILL mid-stream (waits for Serve to replace the replica)")
        rows.append(faults.engine_killed(up, expected))
        log("engine SIGSTOP mid-stream")
        rows.append(faults.engine_frozen(up, expected))
        log("router SIGKILL and restart")
        row, restarted = faults.router_restarted(up, expected, workdir)
        rows.append(row)
        log("Redis stop and restart")
        rows.append(faults.redis_restarted(up, expected))
        log("clients hanging up (waits for Ray's metrics export)")
        rows.append(faults.client_disconnects(up))
        for tenant in ("oversized", "deep-json", "failed-keys"):
            log(f"abuse: {tenant}")
            rows.append(abuse(up, tenant))
    finally:
        if restarted is not None:
            restarted.terminate()
            restarted.wait(timeout=30)
    return [*rows, overloaded], measured


def markdown(rows: list[Row], measured: Overload, args: argparse.Namespace) -> str:
    rss = [[name, mib["before"], mib["after"]] for name, mib in measured.rss_mib.items()]
    return (
        f"# Reliability: faults and abuse on one stack (glm-4.6-tiny on CPU, {stack.REPLICAS} engine replicas, "
        f"migration limit {stack.MIGRATION_LIMIT}, stall limit {stack.STALL_S} s)\n\n"
        + table(rows)
        + "\nStreams: 4 greedy streams of 96 tokens per fault case, the fault injected once each holds 8 (SIGSTOP: "
        "SIGCONT 20 s later); "
        "probes: a short request every 0.5 s during each case. *Recovery*: the longest a client waited to be "
        "served again after the fault (a stream's wait for its next token, or the probes' outage). *Lost*: "
        "answers whose token ids differ from an uninterrupted run (or, under overload, fall short of "
        "`max_tokens`). *Billed*: the output tokens the ingress settled for the case's tenant "
        "(`glmserve_ingress_tokens_total`), against the token ids the clients received (for hang-ups: against "
        "what the engines generated, `vllm:generation_tokens`).\n\n"
        f"## 3x capacity ({3 * CAPACITY} streams; capacity {CAPACITY} = {stack.REPLICAS} replicas x "
        f"{stack.MAX_ONGOING})\n\n"
        f"Admitted requests' p99 TTFT at 3x: **{p99_ms(measured.loaded):.0f} ms**, against "
        f"**{p99_ms(measured.runs['light']):.0f} ms** under a light load ({LOADS['light'][1]} streams): "
        f"**{measured.ratio('light'):.2f}x** (goal <= 1.5x); against **{p99_ms(measured.runs['at capacity']):.0f} ms** "
        f"at capacity ({CAPACITY} streams, every slot busy): **{measured.ratio('at capacity'):.2f}x**. Pooled over "
        f"{args.rounds} alternating rounds of {args.overload_seconds / args.rounds:g} s per load; p99 ms per round: "
        + "; ".join(", ".join(f"{load} {ms:.0f}" for load, ms in one.items()) for one in measured.per_round)
        + ".\n\n"
        + markdown_table(["process", "RSS MiB before", "RSS MiB after"], rss)
        + "\n"
        + _where_time_goes(measured)
    )


def _where_time_goes(measured: Overload) -> str:
    """Per load, averaged over the rounds: the cores each process used, the router's mean queue
    wait of the requests it let through, its refusals a second, how long a refused client waited
    for its 503; then the 3x profile's top frames."""
    roles = sorted({role for runs in measured.spent.values() for one in runs for role in one["cores"]})
    rows = []
    for load, runs in measured.spent.items():
        if runs:
            cores = [sum(one["cores"].get(role, 0.0) for one in runs) / len(runs) for role in roles]
            waits = sum(one["router_mean_wait_ms"] for one in runs) / len(runs)
            refusals = sum(one["router_refusals_per_s"] for one in runs) / len(runs)
            refusal_ms = sum(one["client_refusal_ms"] for one in runs) / len(runs)
            rows.append([load, *(round(c, 2) for c in cores), round(waits, 1), round(refusals, 1), round(refusal_ms)])
    text = "## Where the time goes (cores used by each process, the router's queue)\n\n" + markdown_table(
        [
            "load",
            *(f"{role} cores" for role in roles),
            "router mean wait ms",
            "router refusals/s",
            "a refusal's mean ms (client)",
        ],
        rows,
    )
    text += "\n" + _waits(measured)
    for name, frames in measured.profile.items():
        text += f"\n### py-spy, {name}, first 3x round (each sample's innermost glmserve frame)\n\n"
        text += markdown_table(["frame", "share"], [[f"`{frame}`", share] for frame, share in frames])
    return text


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 2) if known else None


def _waits(measured: Overload) -> str:
    """Per load, averaged over the rounds: what waited for a core (each role's threads, in cores'
    worth of time; the machine's CPU pressure), the load generator's own loop lag, and a refusal
    and a trivial request as the ingress replica timed them and as their clients did."""
    roles = sorted({role for runs in measured.spent.values() for one in runs for role in one.get("runqueue_cores", {})})
    rows = []
    for load, runs in measured.spent.items():
        if not runs:
            continue
        waited = [_mean([one.get("runqueue_cores", {}).get(role) for one in runs]) for role in roles]
        rows.append([
            load, _mean([one.get("machine_busy_cores") for one in runs]),
            _mean([one.get("cpu_pressure_some") for one in runs]), *waited,
            *(_mean([one.get(key) for one in runs]) for key in ("lag_mean_ms", "lag_p99_ms", "ingress_refusal_ms",
                                                                "client_refusal_ms", "ingress_trivial_ms",
                                                                "trivial_client_ms")),
        ])  # fmt: skip
    headers = ["load", "machine busy cores", "CPU pressure (some)", *(f"{role} waited for a core" for role in roles),
               "load generator loop lag mean ms", "loop lag p99 ms", "a refusal in the ingress ms (Serve's log)",
               "a refusal at the client ms", "GET /v1/models in the ingress ms",
               "GET /v1/models at the client ms"]  # fmt: skip
    text = "## What waited (run-queue time per process, CPU pressure, requests inside and outside the ingress)\n\n"
    text += markdown_table(headers, rows)
    groups = sorted({g for runs in measured.spent.values() for one in runs for g in one.get("other_cores", {})})
    if groups:
        text += "\nCores used by the machine's other processes (outside the stack's roles and the load generator):\n\n"
        others = [
            [load, *(_mean([one.get("other_cores", {}).get(g, 0.0) for one in runs]) for g in groups)]
            for load, runs in measured.spent.items()
            if runs
        ]
        text += markdown_table(["load", *groups], others)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[1])
    parser.add_argument("--overload-seconds", type=float, default=40, help="seconds of each load, over all rounds")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the light, at-capacity and 3x loads")
    parser.add_argument("--port", type=int, default=8311)
    parser.add_argument(
        "--cases",
        choices=["all", "overload"],
        default="all",
        help="overload: only the light, at-capacity and 3x loads (writes reliability_overload.*)",
    )
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="py-spy records of the ingress and router in the first 3x round go here")  # fmt: skip
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="glmserve-reliability-"))
    log(f"starting glmserve up (logs in {workdir})")
    up = stack.start(workdir, args.port, TENANTS)
    try:
        rows, measured = run_cases(up, workdir, args)
    finally:
        log("stopping the stack")
        stack.shutdown(up)
    md = markdown(rows, measured, args)
    data: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.reliability", *(argv if argv is not None else sys.argv[1:])]),
        "args": {**vars(args), "profile_dir": str(args.profile_dir)},
        "rows": [{**asdict(row), "failed": dict(row.failed)} for row in rows],
        "overload": measured.to_json(),
    }  # fmt: skip
    ttft = measured.to_json()["ttft_ms"]
    name = "reliability" if args.cases == "all" else "reliability_overload"
    for path in write(name, data, md, lambda p: plot(rows, ttft, p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
