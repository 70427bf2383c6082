"""Where the CPU goes: seconds of CPU each process on this machine used while a running server
served the serving-overhead load (64 requests, concurrency 8, 64 output tokens).

    python -m benchmarks.cpu_by_process --port 8000 [--top 12] [--api-key KEY]

Start the server first (`glmserve up --port 8000`, or bare vLLM). On a machine with as few cores
as this one the relays' CPU comes out of the engine's share, so this explains throughput ratios.
Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from benchmarks.loadgen import prompts, run_load

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command line, user + system CPU seconds) of every process readable in /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = cmd or stat[stat.index("(") : stat.rindex(")") + 1]
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="glm-4.6-tiny")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--api-key", help="a tenant's key, for a server with a tenants file")
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}/v1"
    texts = prompts(64, 200, seed=0)
    asyncio.run(run_load(base, args.model, texts[:8], concurrency=8, max_tokens=8, api_key=args.api_key))  # warm-up
    before, started = cpu_seconds(), time.monotonic()
    result = asyncio.run(run_load(base, args.model, texts, concurrency=8, max_tokens=64, api_key=args.api_key))
    wall, after = time.monotonic() - started, cpu_seconds()
    summary = result.summary()
    print(f"{summary['ok']}/{summary['requests']} ok, {summary['throughput_tok_s']:.1f} tok/s, {wall:.1f} s wall")
    used = sorted(
        ((cpu - before.get(pid, ("", 0.0))[1], pid, name) for pid, (name, cpu) in after.items()), reverse=True
    )
    print(f"{'CPU s':>7} {'% core':>7} {'pid':>7}  process")
    for cpu, pid, name in used[: args.top]:
        print(f"{cpu:7.2f} {100 * cpu / wall:7.1f} {pid:>7}  {name[:90]}")


if __name__ == "__main__":
    main()
