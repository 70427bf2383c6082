"""benchmarks/results/routing_scale[_goal].{json,md,png} from one run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks import results_io

GIB = 1 << 30


def _goal_point(results: dict[str, Any]) -> dict[str, Any]:
    goal = results["goal_point"]
    at = (goal["engines"], goal["blocks_per_engine"])
    return next(p for p in results["points"] if p["code"] == "new" and (p["engines"], p["blocks_per_engine"]) == at)


def goals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    point = _goal_point(results)
    fleet, ingest = results["fleet_updates_per_s"], results["fanin"]["entry_updates_per_s"]
    rows = {
        "decision_p99_ms": (point["decision_p99_ms"], "<= 5", point["decision_p99_ms"] <= 5),
        "decisions_per_s": (point["decisions_per_s"], ">= 1000", point["decisions_per_s"] >= 1000),
        "memory_gib_per_replica": (point["memory_bytes"] / GIB, "<= 2", point["memory_bytes"] <= 2 * GIB),
        "ingest_vs_fleet_event_rate_one_replica": (ingest / fleet, ">= 1", ingest >= fleet),
        "shards_for_the_fleet_event_rate": (results["shards_for_ingest"], "ingest per shard >= its events", True),
    }
    return {name: {"value": v, "goal": g, "met": m} for name, (v, g, m) in rows.items()}


def markdown(results: dict[str, Any]) -> str:
    env = results.get("environment") or results_io.environment()
    fan = results["fanin"]
    goal = results["goal_point"]
    lines = [
        "# Router scale benchmark",
        "",
        f"`{results['command']}` at {env['date']} (commit {env['commit']}).",
        "",
        f"Machine: {env['machine']}, {env['cpus']} cores, Python {env['python']}. In-process: the router's own "
        "`Router`, events through `decode_batch` and `apply_events`, then "
        f"{results['decisions']} Route + Complete of 8192-token prompts one at a time. `today` is "
        f"`{results.get('baseline_ref', 'main')}`'s router run from a copy of its tree; `new` is this tree's. "
        "Memory is the process's resident "
        "growth over the ingest (peak: during it, with the hash table's growth); the longest batch is the "
        "longest single `apply_events` while ingesting (new code: a growth of the hash table).",
        "",
    ]
    headers = [
        "code",
        "engines",
        "blocks/engine",
        "entries",
        "memory GiB (peak)",
        "bytes/entry",
        "ingest entries/s",
        "longest batch ms",
        "decision p50 / p99 ms",
        "decisions/s",
        "longest prefix chosen",
    ]
    rows = [
        [
            p["code"],
            f"{p['engines']:,}",
            f"{p['blocks_per_engine']:,}",
            f"{p['entries'] / 1e6:.1f}M",
            f"{p['memory_bytes'] / GIB:.2f} ({p['peak_memory_bytes'] / GIB:.2f})",
            f"{p['bytes_per_entry']:.0f}",
            f"{p['ingest_entries_per_s'] / 1e6:.2f}M",
            f"{p['longest_batch_ms']:.0f}",
            f"{p['decision_p50_ms']:.2f} / {p['decision_p99_ms']:.2f}",
            f"{p['decisions_per_s']:.0f}",
            f"{100 * p['longest_prefix_share']:.1f}%",
        ]
        for p in sorted(results["points"], key=lambda p: (p["engines"], p["blocks_per_engine"], p["code"] == "new"))
    ]
    lines.append(results_io.markdown_table(headers, rows))
    lines += [
        "## Event fan-in into one replica",
        "",
        f"{fan['engines']:,} engines at full cache ({fan['entries'] / 1e6:.1f}M entries); each engine in turn sends "
        f"a batch of one BlockStored of {fan['batch_blocks']} new blocks and one BlockRemoved of as many of its "
        f"oldest: {fan['batches']:,} batches, **{fan['entry_updates_per_s'] / 1e6:.2f}M entry updates/s** "
        f"({fan['batches_per_s']:,.0f} batches/s) on one core, decoding included, ZMQ excluded.",
        "",
        f"The fleet's event rate at {goal['engines']:,} engines writing {results['kv_tokens_per_engine_s']:,.0f} KV "
        f"tokens/s each (uncached prefill + decode; full caches evict a block per block stored): "
        f"{results['fleet_updates_per_s'] / 1e6:.2f}M updates/s, so {results['shards_for_ingest']} shard(s) of the "
        "engines (docs/router-sizing.md) keep up.",
        "",
        f"## Goals ({goal['engines']:,} engines x {goal['blocks_per_engine']:,} blocks, new code)",
        "",
    ]
    g = goals(results)
    lines.append(
        results_io.markdown_table(
            ["goal", "value", "target", "met"],
            [[k, v["value"], v["goal"], "yes" if v["met"] else "no"] for k, v in g.items()],
        )
    )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels = [
        ("bytes_per_entry", "bytes per index entry", False),
        ("ingest_entries_per_s", "ingest entries/s", False),
        ("decision_p99_ms", "decision p99 (ms)", True),
        ("decisions_per_s", "Route + Complete per second", False),
    ]
    sweep_blocks = (
        min(p["blocks_per_engine"] for p in results["points"] if p["code"] == "today")
        if any(p["code"] == "today" for p in results["points"])
        else None
    )
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for code, style in (("today", "o--"), ("new", "s-")):
            pts = sorted(
                (p for p in results["points"] if p["code"] == code and p["blocks_per_engine"] == sweep_blocks),
                key=lambda p: p["engines"],
            )
            if pts:
                ax.plot([p["engines"] for p in pts], [p[key] for p in pts], style, label=f"{code}")
        others = [p for p in results["points"] if p["code"] == "new" and p["blocks_per_engine"] != sweep_blocks]
        for p in others:
            ax.plot(p["engines"], p[key], "*", markersize=12, label=f"new, {p['blocks_per_engine']:,} blocks/engine")
        ax.set_xscale("log", base=2)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("engines")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Router index and decision by fleet size ({sweep_blocks or 'n/a'} blocks per engine unless marked)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], name: str = "routing_scale") -> list[Path]:
    return results_io.write(name, results, markdown(results), lambda path: plot(results, path))
