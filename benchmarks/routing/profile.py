"""`python -m benchmarks.routing.profile`: where the router's CPU goes per admitted Route + Complete.

The workload of `python -m benchmarks.routing`'s gRPC part (64 workers' KV index, 8192-token
prompts, 16 tenants admitted in a real redis-server, each Route followed by its Complete), in a
closed loop, while py-spy samples the router process (`--nonblocking`: the router is never paused).
Each sample is put in the first component whose frames it holds, for today's router (a git ref,
default `main`) and this tree's, one after the other in the same run; the innermost frames that
hold the most samples are listed too. (py-spy's --native mode is not used: it must pause the
router at each sample, and its samples then land on system calls far more often than they cost:
getpid(), a fraction of a microsecond, was among the top frames.)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks import results_io
from benchmarks.routing.corpus import TENANTS, WORKERS, corpus, requests, worker_events
from benchmarks.routing.latency import MODEL, fill_index, routers
from benchmarks.routing.load import closed_loop
from benchmarks.routing.router_process import RouterProcess
from glmserve.router.hashing import BlockHasher

CALLERS = 16
TOP_FRAMES = 15  # innermost frames listed
# (component, frame substrings): a sample belongs to the first component one of whose substrings
# occurs in one of its frames. The router's only threads are the loop's, the metrics server's and
# gRPC's poller (its Python frames are Thread.run's alone).
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("decision: prompt block hashing", ("BlockHasher.runs (",)),
    ("decision: KV index walk", ("KVIndex.",)),
    ("decision: filters, scoring, booking", ("Router.route (",)),
    ("limits store client (redis-py)", ("(redis/",)),
    ("admission (glmserve.admission, admitter)", ("glmserve/admission/", "router/admitter.py")),
    ("flow control", ("router/flow/",)),
    ("message conversion (convert.py)", ("router/convert.py",)),
    ("Route/Complete handlers, rest", ("RouterService.",)),
    ("metrics HTTP server thread", ("serve_forever",)),
    ("gRPC poller thread", ("Thread.run (threading.py",)),
    ("gRPC server and event loop (no glmserve frame)", ("",)),
]


def _log(message: str) -> None:
    print(f"[routing.profile] {message}", file=sys.stderr, flush=True)


def component(frames: list[str]) -> str:
    for name, patterns in COMPONENTS:
        for pattern in patterns:
            if any(pattern in frame for frame in frames):
                return name
    raise AssertionError("the last component matches every sample")


def breakdown(raw: Path) -> tuple[dict[str, int], Counter[str]]:
    """py-spy's raw (collapsed) output -> samples per component, and per innermost frame (its
    function and file, without the line)."""
    counts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        if line.strip():
            stack, n = line.rsplit(" ", 1)
            frames = stack.split(";")
            counts[component(frames)] += int(n)
            leaves[re.sub(r":\d+\)$", ")", frames[-1])] += int(n)
    return dict(counts), leaves


def _profile(
    tree: Path, admission: dict[str, Any], events: Any, prompts: Any, *, seconds: float, work: Path
) -> dict[str, Any]:
    tenants = [f"t{t}" for t in range(TENANTS)]
    router = RouterProcess(tree, admission)
    try:
        fill_index(router, events, _log)
        closed_loop(router.port, prompts[:200], callers=CALLERS, seconds=2, model=MODEL, tenants=tenants)  # warm
        raw = work / "samples.txt"
        spy = Path(sys.executable).parent / "py-spy"
        command = [str(spy), "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", str(raw)]
        sampler = subprocess.Popen(
            [*command, "-d", str(int(seconds) + 2), "-p", str(router.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        cpu, started = router.cpu_s(), time.perf_counter()
        rate = closed_loop(router.port, prompts, callers=CALLERS, seconds=seconds, model=MODEL, tenants=tenants)
        elapsed, cpu = time.perf_counter() - started, router.cpu_s() - cpu
        sampler.wait()
    finally:
        router.close()
    samples, leaves = breakdown(raw)
    total = sum(samples.values())
    ms_per_pair = cpu / (rate * elapsed) * 1e3
    return {
        "closed_loop_per_s": rate,
        "router_cpu_share": cpu / elapsed,
        "router_cpu_ms_per_pair": ms_per_pair,
        "samples": total,
        "components": {
            name: {"share": n / total, "ms_per_pair": n / total * ms_per_pair} for name, n in samples.items()
        },
        "innermost": [
            {"frame": frame, "share": n / total, "ms_per_pair": n / total * ms_per_pair}
            for frame, n in leaves.most_common(TOP_FRAMES)
        ],
    }


def run(seconds: float, sessions_per_worker: int, baseline_ref: str) -> dict[str, Any]:
    c = corpus(sessions_per_worker, 0)
    hasher = BlockHasher()
    events = [worker_events(c, w, hasher) for w in range(WORKERS)]
    prompts, _ = requests(c, 4000, 1)
    codes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="routing-profile-") as tmp:
        for name, tree, admission in routers(baseline_ref, _log):
            codes[name] = _profile(tree, admission, events, prompts, seconds=seconds, work=Path(tmp))
    return {
        "workers": WORKERS,
        "tenants": TENANTS,
        "callers": CALLERS,
        "sessions_per_worker": sessions_per_worker,
        "seconds": seconds,
        "baseline_ref": baseline_ref,
        "codes": codes,
        "cpu_cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    codes = results["codes"]
    lines = [
        "# Router CPU per admitted Route + Complete",
        "",
        f"`{results['command']}` at {env['date']} (commit {env['commit']}).",
        "",
        f"Machine: {env['machine']}, {env['cpus']} cores, Python {env['python']}. Load average "
        f"{results['load_average'][0]:.1f} at the end.",
        "",
        f"{results['workers']} workers ({results['sessions_per_worker']} sessions each in the KV index), "
        f"8192-token prompts, {results['tenants']} tenants admitted in a real redis-server, "
        f"{results['callers']} callers in a closed loop for {results['seconds']:g} s while py-spy samples the "
        "router (200/s, not pausing it). Client, redis-server and router share the machine's cores.",
        "",
    ]
    headers = ["", *codes]
    rows = [
        ["Route + Complete per second", *(f"{c['closed_loop_per_s']:.0f}" for c in codes.values())],
        ["router CPU (share of one core)", *(f"{c['router_cpu_share']:.0%}" for c in codes.values())],
        ["router CPU per pair", *(f"{c['router_cpu_ms_per_pair']:.2f} ms" for c in codes.values())],
    ]
    for name, _ in COMPONENTS:
        cells = []
        for c in codes.values():
            part = c["components"].get(name)
            cells.append(f"{part['ms_per_pair']:.2f} ms ({part['share']:.0%})" if part else "0")
        rows.append([name, *cells])
    lines.append(results_io.markdown_table(headers, rows))
    for name, c in codes.items():
        lines += ["", f"Innermost frames holding the most samples, {name}:", ""]
        top = [[f"`{leaf['frame']}`", f"{leaf['ms_per_pair']:.3f} ms ({leaf['share']:.1%})"] for leaf in c["innermost"]]
        lines.append(results_io.markdown_table(["frame", "per pair"], top))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    codes = results["codes"]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.8 * len(codes)))
    for row, c in enumerate(codes.values()):
        left = 0.0
        for name, _ in COMPONENTS:
            width = c["components"].get(name, {}).get("ms_per_pair", 0.0)
            ax.barh(row, width, left=left, label=name if row == 0 else None)
            left += width
    ax.set(yticks=range(len(codes)), yticklabels=list(codes), xlabel="router CPU per Route + Complete (ms)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2)
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="closed-loop time sampled (default 10)")
    parser.add_argument("--sessions-per-worker", type=int, default=20, help="KV index size (default 20)")
    parser.add_argument("--baseline-ref", default="main", help="git ref of today's router")
    args = parser.parse_args(argv)
    results = run(args.seconds, args.sessions_per_worker, args.baseline_ref)
    results["command"] = " ".join(["python -m benchmarks.routing.profile", *(argv or sys.argv[1:])])
    results["environment"] = results_io.environment()
    text = markdown(results)
    for path in results_io.write("routing_profile", results, text, lambda path: plot(results, path)):
        _log(f"wrote {path}")
    print(text)


if __name__ == "__main__":
    main()
