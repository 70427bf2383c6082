"""`python -m benchmarks.routing [--quick] [--skip-quality] [--skip-latency]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.routing import latency, quality, report


def _log(message: str) -> None:
    print(f"[routing] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a quarter of the sessions and 5 s of latency load")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--rate", type=float, default=500.0, help="Route calls per second (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency load duration (default 20)")
    parser.add_argument("--baseline-ref", default="main", help="git ref of today's router for the latency runs")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.routing", *(argv if argv is not None else sys.argv[1:])]),
    }
    if not args.skip_quality:
        results["quality"] = {}
        for scenario in quality.scenarios(args.quick):
            _log(f"quality: scenario {scenario.name}")
            results["quality"][scenario.name] = quality.run(scenario)
    if not args.skip_latency:
        seconds = 5.0 if args.quick else args.seconds
        results["latency"] = latency.run(
            args.rate, seconds, sessions_per_worker=60, log=_log, baseline_ref=args.baseline_ref
        )
    for path in report.write(results):
        _log(f"wrote {path}")
    print(report.markdown(results))


if __name__ == "__main__":
    main()
