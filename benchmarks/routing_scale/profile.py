"""`python -m benchmarks.routing_scale.profile [--engines N] [--blocks N] [--decisions N]`: where one
Route + Complete decision's time goes, by cProfile, on measure.py's fleet (each engine's tenant
context, two conversations and filler, 90% of prompts continuing a conversation). Half of the
decisions run unprofiled first (their rate is printed: cProfile slows Python-heavy parts more
than numpy-heavy ones), then the other half under the profiler; prints the functions by total and
by cumulative time."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

import numpy as np

from benchmarks.routing_scale.measure import MODEL, Fleet
from glmserve.router.types import RouteQuery, Usage


def _decide(fleet: Fleet, prompts: list[np.ndarray], first_id: int) -> None:
    for i, prompt in enumerate(prompts, first_id):
        query = RouteQuery(f"r{i}", "t", MODEL, prompt)
        fleet.router.route(query)
        fleet.router.complete(query.request_id, "finished", Usage())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing_scale.profile", description=__doc__)
    parser.add_argument("--engines", type=int, default=1250)
    parser.add_argument("--blocks", type=int, default=4000, help="blocks cached per engine (default 4,000)")
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30, help="functions listed per ordering")
    args = parser.parse_args(argv)
    fleet = Fleet(args.engines, args.blocks, seed=0)
    prompts = fleet.prompts(args.decisions)
    for e in range(args.engines):
        batches, _ = fleet.cache(e)
        fleet.ingest(e, batches)
    half = args.decisions // 2
    started = time.perf_counter()
    _decide(fleet, prompts[:half], 0)
    print(f"unprofiled: {half / (time.perf_counter() - started):.0f} decisions/s (Route + Complete)")
    profiler = cProfile.Profile()
    profiler.runcall(_decide, fleet, prompts[half:], half)
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
