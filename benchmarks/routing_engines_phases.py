"""Where each phase of `benchmarks.routing_engines` lost its time, from its committed results.

    python -m benchmarks.routing_engines_phases [benchmarks/results/routing_engines.json]

Per phase (in the order they ran): hit rate, P90 TTFT, and the P90 of the prefill floor, each
request's uncached prompt tokens at one engine's share of the stack's measured prefill capacity
(what its TTFT would be on an idle engine). TTFT minus that floor is queueing and the stack's own
overhead: two phases with the same hit rate and floor but different TTFT differ by queueing (load
balance, or this shared machine's load during the phase), not by cache affinity. Prints a table;
writes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.loadgen import percentile
from benchmarks.results_io import markdown_table

RESULTS = Path(__file__).parent / "results" / "routing_engines.json"


def phase_row(phase: dict[str, Any], engines: int) -> list[Any]:
    ok = [r for r in phase["results"] if r["status"] == 200]
    per_engine = phase["stack_capacity_tok_s"] / engines  # tokens/s one busy engine prefills
    ttft = sorted(r["ttft_s"] * 1000 for r in ok)
    floor = sorted((r["prompt"] - r["cached"]) / per_engine * 1000 for r in ok)
    excess = sorted(r["ttft_s"] * 1000 - (r["prompt"] - r["cached"]) / per_engine * 1000 for r in ok)
    hit = sum(r["cached"] for r in ok) / max(1, sum(r["prompt"] for r in ok))
    return [phase["round"] + 1, phase["policy"], f"{hit:.3f}", phase["stack_capacity_tok_s"],
            percentile(ttft, 90), percentile(floor, 90), percentile(excess, 50), percentile(excess, 90)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS, help="a routing_engines.json")
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    engines = data["args"]["replicas"]
    headers = ["round", "policy", "hit rate", "stack capacity tok/s", "TTFT p90 ms", "prefill floor p90 ms",
               "TTFT - floor p50 ms", "TTFT - floor p90 ms"]  # fmt: skip
    print(markdown_table(headers, [phase_row(p, engines) for p in data["phases"]]))


if __name__ == "__main__":
    main()
