"""benchmarks/results/routing.{json,md,png} from one run's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

MAIN = "agentic-4-ingress"
ORDER = ("precise", "approximate", "round-robin", "oracle")


def goals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    quality = results.get("quality", {}).get(MAIN)
    if quality:
        p = quality["policies"]
        p90 = {name: p[name]["ttft_s"]["p90"] for name in ORDER}
        out["p90_ttft_vs_round_robin"] = {"value": p90["round-robin"] / p90["precise"], "goal": ">= 10"}
        out["p90_ttft_vs_approximate"] = {"value": p90["approximate"] / p90["precise"], "goal": ">= 2"}
        out["hit_rate_vs_oracle"] = {"value": p["precise"]["hit_rate"] / p["oracle"]["hit_rate"], "goal": ">= 0.95"}
        for key, threshold in (
            ("p90_ttft_vs_round_robin", 10),
            ("p90_ttft_vs_approximate", 2),
            ("hit_rate_vs_oracle", 0.95),
        ):
            out[key]["met"] = out[key]["value"] >= threshold
    latency = results.get("latency")
    if latency:
        decision = latency["in_process_decision"]
        out["route_decision_p50_ms"] = {"value": decision["p50_ms"], "goal": "<= 1", "met": decision["p50_ms"] <= 1}
        out["route_decision_p99_ms"] = {"value": decision["p99_ms"], "goal": "<= 3", "met": decision["p99_ms"] <= 3}
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Routing benchmark",
        "",
        f"`{results['command']}` at {results['generated_at']} (commit {results['commit']}).",
        "",
    ]
    lines += [f"Machine: {results['machine']}.", ""]
    for name, scenario in results.get("quality", {}).items():
        w, c = scenario["workload"], scenario["cluster"]
        lines += [
            f"## Quality: {name}",
            "",
            f"{w['tenants']} tenants, {w['sessions']} sessions x {w['turns']} turns, {w['session_rate_per_s']}/s, "
            f"contexts {w['context_tokens'][0]}-{w['context_tokens'][1]} tokens; {c['workers']} engines with "
            f"{c['engine']['cache_blocks']} blocks of {c['engine']['block_size']} tokens each, "
            f"{c['routers']} router replica(s), events {c['event_lag_s'] * 1e3:.0f} ms late.",
            "",
            "| policy | hit rate | TTFT p50 | TTFT p90 | TTFT p99 | prefill busy (mean / max) |",
            "|---|---|---|---|---|---|",
        ]
        for policy in ORDER:
            r = scenario["policies"][policy]
            t = r["ttft_s"]
            lines.append(
                f"| {policy} | {r['hit_rate']:.1%} | {t['p50'] * 1e3:.0f} ms | {t['p90'] * 1e3:.0f} ms | "
                f"{t['p99'] * 1e3:.0f} ms | {r['prefill_busy']['mean']:.0%} / {r['prefill_busy']['max']:.0%} |"
            )
        lines.append("")
    latency = results.get("latency")
    if latency:
        lines += [
            "## Route latency",
            "",
            f"{latency['workers']} workers, {latency['index_entries']:,} (worker, block) index entries, "
            f"{latency['prompt_tokens']}-token prompts at {latency['rate_per_s']:.0f}/s offered "
            f"({latency['achieved_rate_per_s']:.0f}/s sent, {latency['failures']} failed); closed-loop throughput "
            f"{latency['closed_loop_throughput_per_s']:.0f} Route+Complete/s.",
            "",
            "| measured | p50 | p90 | p99 |",
            "|---|---|---|---|",
        ]
        rows = (
            ("decision, in-process (exact)", latency["in_process_decision"]),
            ("decision, router's histogram (bucketed)", latency["server_decision_bucketed"]),
            ("gRPC round trip, all", latency["client_grpc"]),
            ("gRPC round trip, prefix first seen", latency["client_grpc_first_sighting"]),
            ("gRPC round trip, prefix seen before", latency["client_grpc_repeat_prefix"]),
        )
        for label, r in rows:
            lines.append(f"| {label} | {r['p50_ms']:.2f} ms | {r['p90_ms']:.2f} ms | {r['p99_ms']:.2f} ms |")
        lines.append("")
    lines += ["## Goals", "", "| goal | value | target | met |", "|---|---|---|---|"]
    for key, g in results["goals"].items():
        lines.append(f"| {key} | {g['value']:.2f} | {g['goal']} | {'yes' if g['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    quality = results.get("quality", {})
    fig, axes = plt.subplots(1, len(quality) + 1, figsize=(6 * (len(quality) + 1), 4.5), squeeze=False)
    axes = axes[0]
    for ax, (name, scenario) in zip(axes, quality.items(), strict=False):
        for policy in ORDER:
            q = scenario["policies"][policy]["ttft_quantiles_s"]
            ax.plot(
                q,
                [i / (len(q) - 1) for i in range(len(q))],
                label=f"{policy} ({scenario['policies'][policy]['hit_rate']:.0%} hits)",
            )
        ax.set(xscale="log", xlabel="TTFT (s)", ylabel="fraction of requests", title=f"TTFT CDF: {name}")
        ax.axhline(0.9, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=8)
    ax = axes[-1]
    latency = results.get("latency")
    if latency:
        labels = ["in-process\ndecision", "gRPC, all", "gRPC, prefix\nfirst seen", "gRPC, prefix\nseen before"]
        keys = ["in_process_decision", "client_grpc", "client_grpc_first_sighting", "client_grpc_repeat_prefix"]
        for i, q in enumerate(("p50_ms", "p99_ms")):
            ax.bar([k + 0.4 * i for k in range(len(keys))], [latency[k][q] for k in keys], width=0.4, label=q[:3])
        ax.set_xticks([k + 0.2 for k in range(len(keys))], labels, fontsize=8)
        ax.set(ylabel="ms", title=f"Route, 8K-token prompts, {latency['rate_per_s']:.0f}/s, 64 workers")
        ax.axhline(1, color="grey", lw=0.5, ls="--")
        ax.axhline(3, color="grey", lw=0.5, ls="--")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["goals"] = goals(results)
    paths = [out / "routing.json", out / "routing.md", out / "routing.png"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    return paths
