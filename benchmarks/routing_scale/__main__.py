"""`python -m benchmarks.routing_scale [--quick | --goal-only]`: the router's KV index and decision
from 64 to 4,096 engines, today's code (the `main` branch, run from a copy of its tree) and this
tree's in the same run, each point in its own process (measure.py), plus the KV event fan-in of
1,250 engines into one replica. Results: benchmarks/results/routing_scale.{json,md,png}
(--goal-only: the goal point alone, both codes, into routing_scale_goal.*).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.baseline import ROOT, baseline_tree
from benchmarks.routing_scale import report

# The cache per engine of the measurement of today's code (benchmarks/routing's corpus:
# 61 conversations of 256 blocks), and the GLM-4.6 goal: ~100 GB of FP8 KV per 8-GPU engine.
SWEEP_BLOCKS = 15_616
GOAL_ENGINES, GOAL_BLOCKS = 1_250, 33_000
SMALL_CACHE_ENGINES, SMALL_CACHE_BLOCKS = 4_096, 8_192


def _log(message: str) -> None:
    print(f"[routing_scale] {message}", file=sys.stderr, flush=True)


def _measure(tree: Path, args: list[str]) -> dict[str, Any]:
    """measure.py in a fresh interpreter whose `glmserve` is the one in `tree` (-m puts the working
    directory first on the path)."""
    command = [sys.executable, "-m", "benchmarks.routing_scale.measure", *args]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small caches, 64-1,250 engines, 300 decisions")
    parser.add_argument(
        "--goal-only", action="store_true", help="only 1,250 engines x 33,000 blocks (both codes) and the fan-in"
    )
    parser.add_argument("--baseline-ref", default="main", help="git ref of today's code (default main)")
    parser.add_argument(
        "--baseline-max-engines",
        type=int,
        default=2048,
        help="largest sweep point run with today's code (its memory grows ~quadratically; 8.7 GiB at 2,048)",
    )
    parser.add_argument(
        "--kv-tokens-per-engine-s",
        type=float,
        default=20_000,
        help="KV tokens each engine writes per second (uncached prefill + decode) for the fleet's event rate",
    )
    args = parser.parse_args(argv)
    decisions = 300 if args.quick else 2000
    if args.quick:
        sweep = [(64, 4_000), (256, 4_000), (1_250, 4_000)]
        goal, fan = (1_250, 4_000), (1_250, 2_000, 10.0)
    elif args.goal_only:
        sweep = [(GOAL_ENGINES, GOAL_BLOCKS)]
        goal, fan = (GOAL_ENGINES, GOAL_BLOCKS), (GOAL_ENGINES, GOAL_BLOCKS, 30.0)
    else:
        sweep = [(e, SWEEP_BLOCKS) for e in (64, 256, 1024, 2048)]
        sweep += [(GOAL_ENGINES, GOAL_BLOCKS), (SMALL_CACHE_ENGINES, SMALL_CACHE_BLOCKS)]
        goal, fan = (GOAL_ENGINES, GOAL_BLOCKS), (GOAL_ENGINES, GOAL_BLOCKS, 30.0)
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.routing_scale", *(argv if argv is not None else sys.argv[1:])]),
        "decisions": decisions,
        "baseline_ref": args.baseline_ref,
        "kv_tokens_per_engine_s": args.kv_tokens_per_engine_s,
        "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="routing-scale-") as tmp:
        baseline = baseline_tree(args.baseline_ref, Path(tmp))
        for engines, blocks in sweep:
            point = ["sweep", "--engines", str(engines), "--blocks", str(blocks), "--decisions", str(decisions)]
            trees = [("new", ROOT)]
            if baseline is not None and engines <= args.baseline_max_engines and blocks == sweep[0][1]:
                trees.insert(0, ("today", baseline))
            for name, tree in trees:
                _log(f"{name}: {engines} engines x {blocks} blocks")
                results["points"].append({"code": name, **_measure(tree, point)})
        engines, blocks, seconds = fan
        _log(f"fan-in: {engines} engines x {blocks} blocks, {seconds:.0f} s of stores + evictions")
        results["fanin"] = _measure(
            ROOT, ["fanin", "--engines", str(engines), "--blocks", str(blocks), "--seconds", str(seconds)]
        )
    results["goal_point"] = {"engines": goal[0], "blocks_per_engine": goal[1]}
    results["fleet_updates_per_s"] = fleet_updates(goal[0], args.kv_tokens_per_engine_s)
    results["shards_for_ingest"] = math.ceil(results["fleet_updates_per_s"] / results["fanin"]["entry_updates_per_s"])
    for path in report.write(results, "routing_scale_goal" if args.goal_only else "routing_scale"):
        _log(f"wrote {path}")
    print(report.markdown(results))


def fleet_updates(engines: int, kv_tokens_per_engine_s: float, block_size: int = 16) -> float:
    """Index entry updates per second of a fleet with full caches: each block stored evicts one."""
    return 2 * engines * kv_tokens_per_engine_s / block_size


if __name__ == "__main__":
    main()
