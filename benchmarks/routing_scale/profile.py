"""`python -m benchmarks.routing_scale.profile [--engines N] [--blocks N] [--decisions N]`: where one
Route + Complete decision's time goes, by cProfile, on measure.py's fleet (each engine's tenant
context, two conversations and filler, 90% of prompts continuing a conversation). Half of the
decisions run unprofiled first (their rate is printed: cProfile slows Python-heavy parts more
than numpy-heavy ones), then the other half under the profiler; prints each part's share of the
profiled time (a markdown table), then the functions by total and by cumulative time. Works on
today's tree too (its walk is `_walk`), so both codes' breakdowns come from this one command."""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import re
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


def _cumulative(stats: pstats.Stats, file: str, function: str, own: bool = False) -> float:
    """Seconds in functions of `file` (a path ending) whose name matches `function`, with what they
    call (or without, `own`)."""
    return sum(
        (tt if own else ct)
        for (path, _, name), (_, _, tt, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
        if path.endswith(file) and re.fullmatch(function, name)
    )


def shares(stats: pstats.Stats) -> list[tuple[str, float]]:
    """(part, seconds) of the profiled decisions, the last part what the others leave."""
    cum = functools.partial(_cumulative, stats)
    total = cum("profile.py", "_decide")
    hashing = cum("router/hashing.py", "runs")
    walks = cum("router/index.py", "_?walk")
    second_walk = cum("router/index.py", "prefix_blocks")
    least = cum("router/candidates.py", "_least_loaded")
    parts = [
        ("hashing the prompt's blocks", hashing),
        ("index walks (lookups, holder masks), hashing excluded", walks - hashing),
        ("filters", cum("plugins/filters.py", "__call__")),
        ("scorers (a walk they make excluded)", cum("plugins/scorers.py", "__call__") - second_walk),
        (
            "candidates: the holders' ids and the candidate list",
            cum("router/candidates.py", "__call__") - least - (walks - second_walk),
        ),
        ("candidates: least-loaded search over the pool", least),
        ("picker", cum("plugins/pickers.py", "__call__")),
        ("expectations of the routed prompt", cum("router/estimates.py", "routed")),
        ("Complete", cum("router/router.py", "complete")),
        (
            "metrics (prometheus_client's own time)",
            _cumulative(stats, "site-packages/prometheus_client/metrics.py", ".*", own=True)
            + _cumulative(stats, "site-packages/prometheus_client/values.py", ".*", own=True),
        ),
    ]
    return [*parts, ("the rest (context, booking, decision, plugin timers' calls)", total - sum(s for _, s in parts))]


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
    total = sum(seconds for _, seconds in shares(stats))
    print(f"\n{args.decisions - half} decisions profiled, {total / (args.decisions - half) * 1e3:.2f} ms each\n")
    print("| part | ms per decision (profiled) | share |\n|---|---|---|")
    for part, seconds in shares(stats):
        print(f"| {part} | {seconds / (args.decisions - half) * 1e3:.3f} | {seconds / total:.0%} |")
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
