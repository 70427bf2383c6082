"""`python -m benchmarks.routing [--quick] [--skip-quality] [--skip-latency] [--out DIR]`."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.routing import latency, quality, report

OUT = Path(__file__).resolve().parents[1] / "results"


def _log(message: str) -> None:
    print(f"[routing] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a quarter of the sessions and 5 s of latency load")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--rate", type=float, default=500.0, help="Route calls per second (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency load duration (default 20)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.routing", *(argv if argv is not None else sys.argv[1:])]),
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit.stdout.strip() or "unknown",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    if not args.skip_quality:
        results["quality"] = {}
        for scenario in quality.scenarios(args.quick):
            _log(f"quality: scenario {scenario.name}")
            results["quality"][scenario.name] = quality.run(scenario)
    if not args.skip_latency:
        seconds = 5.0 if args.quick else args.seconds
        results["latency"] = latency.run(args.rate, seconds, sessions_per_worker=60, log=_log)
    for path in report.write(results, args.out):
        _log(f"wrote {path}")
    print(report.markdown(results))


if __name__ == "__main__":
    main()
