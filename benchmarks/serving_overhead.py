"""glmserve's production path vs bare vLLM's OpenAI server: same checkpoint, engine args and load.

    python -m benchmarks.serving_overhead [--requests 64] [--concurrency 8] [--max-tokens 64]

Starts bare vLLM (`python -m vllm.entrypoints.openai.api_server`), measures, stops it; then
`glmserve up` as production runs a request: an API key from a tenants file, the plan's limits
kept in a local redis-server (high enough never to refuse), and the router (which `glmserve up`
starts whenever tenants are configured) admitting, queueing and routing each request. Alternates
the two for `--rounds` rounds, checks from the router's and the ingress's metrics that every
glmserve request was admitted by the router against Redis, and reports the ratios (this machine is
noisy; only ratios taken in one run are compared). Writes benchmarks/results/serving_overhead.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.loadgen import LoadResult, prompts, run_load
from benchmarks.results_io import markdown_table, write
from benchmarks.servers import launch, metric_sum, stop, wait_ready
from glmserve.common.config import STREAM_INTERVAL_MS, ServeConfig
from glmserve.common.metrics import (
    ADMISSION_DECISIONS,
    ADMISSION_FAIL_OPEN,
    ADMISSION_STORE_UP,
    INGRESS_ROUTER_FALLBACKS,
)
from glmserve.common.tenancy import hash_api_key
from glmserve.serving.engine.args import engine_kwargs
from glmserve.serving.models import resolve_model
from tests.admission.redis_server import RedisServer

MODEL = "glm-4.6-tiny"
API_KEY = "sk-bench-overhead-0123456789"
# Limits that Redis tracks on every request but that this load never reaches.
PLAN = {
    "name": "pro",
    "priority": "standard",
    "requestsPerMinute": 1_000_000,
    "inputTokensPerMinute": 1_000_000_000,
    "outputTokensPerMinute": 1_000_000_000,
    "maxConcurrentRequests": 10_000,
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def vllm_cli_args(kwargs: dict[str, Any]) -> list[str]:
    """The platform's engine kwargs as `vllm serve` flags, so both servers run the same engine."""
    args: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def tenants_file(directory: Path) -> Path:
    tenant = {"id": "bench", "plan": PLAN["name"], "apiKeys": [{"sha256": hash_api_key(API_KEY)}]}
    path = directory / "tenants.yaml"
    path.write_text(yaml.safe_dump({"plans": [PLAN], "tenants": [tenant]}))
    return path


def production_path(port: int, up_log: Path) -> dict[str, float]:
    """What glmserve's router and ingress counted: admissions against Redis, and any request that bypassed them."""
    found = re.search(r"router: \S+ \(metrics (http://\S+/metrics)\)", up_log.read_text())
    if found is None:
        raise RuntimeError(f"glmserve up started no router (see {up_log})")
    router, ingress = found.group(1), f"http://127.0.0.1:{port}/metrics"
    return {
        "router_allowed": metric_sum(router, ADMISSION_DECISIONS.name, outcome="allowed"),
        "router_refused": metric_sum(router, ADMISSION_DECISIONS.name)
        - metric_sum(router, ADMISSION_DECISIONS.name, outcome="allowed"),
        "router_store_up": metric_sum(router, ADMISSION_STORE_UP.name),
        "router_fail_open": metric_sum(router, ADMISSION_FAIL_OPEN.name),
        "ingress_router_fallbacks": metric_sum(ingress, INGRESS_ROUTER_FALLBACKS.name),
    }


def measure(
    name: str,
    cmd: list[str],
    *,
    health: str,
    base: str,
    texts: list[str],
    args: argparse.Namespace,
    check: Callable[[Path], dict[str, float]] | None = None,
) -> tuple[LoadResult, dict[str, float]]:
    log(f"starting {name}")
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{name}.log"
    logfile = log_path.open("wb")
    proc = launch(cmd, logfile)
    try:
        t0 = time.monotonic()
        wait_ready(health, proc)
        log(f"{name} ready after {time.monotonic() - t0:.0f} s; warming up")
        asyncio.run(run_load(base, MODEL, texts[:8], concurrency=args.concurrency, max_tokens=8, api_key=API_KEY))

        def progress(done: int, total: int) -> None:
            if done % 16 == 0 or done == total:
                log(f"{name}: {done}/{total} requests")

        result = asyncio.run(
            run_load(
                base,
                MODEL,
                texts,
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
                api_key=API_KEY,
                progress=progress,
            )
        )
        log(f"{name}: {json.dumps({k: round(v, 2) for k, v in result.summary().items()})}")
        counted = check(log_path) if check else {}
        if counted:
            log(f"{name}: {json.dumps(counted)}")
        return result, counted
    finally:
        stop(proc)
        logfile.close()


def plot(results: dict[str, LoadResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, result in results.items():
        ok = [r for r in result.requests if r.status == 200]
        ttft = sorted(1000 * r.ttft_s for r in ok)
        itl = sorted(1000 * x for r in ok for x in r.itls_s)
        axes[0].plot(ttft, [i / len(ttft) for i in range(len(ttft))], label=name)
        axes[1].plot(itl, [i / len(itl) for i in range(len(itl))], label=name)
    axes[0].set(title="TTFT CDF", xlabel="ms", ylabel="fraction of requests")
    axes[1].set(title="Inter-token latency CDF", xlabel="ms", xscale="log")
    names = list(results)
    axes[2].bar(names, [results[n].summary()["throughput_tok_s"] for n in names], color=["#888", "#2a7"])
    axes[2].set(title="Output throughput", ylabel="tokens/s")
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument(
        "--stream-interval-ms", type=int, default=STREAM_INTERVAL_MS, help="glmserve's (bare vLLM sends each token)"
    )
    args = parser.parse_args()

    model = resolve_model(MODEL, progress=log)
    cfg = ServeConfig()
    texts = prompts(args.requests, args.prompt_words, seed=0)
    bin_dir = Path(sys.executable).parent

    vllm_port, glm_port = 8101, 8102
    bare_cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model.path), "--served-model-name", MODEL, "--port", str(vllm_port),
        *vllm_cli_args(engine_kwargs(model, cfg, "cpu")),
    ]  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="glmserve-bench-"))
    redis_server = RedisServer(workdir)
    redis_server.start()
    glm_cmd = [
        str(bin_dir / "glmserve"), "up", "--port", str(glm_port), "--stream-interval-ms", str(args.stream_interval_ms),
        "--tenants-file", str(tenants_file(workdir)), "--redis-url", redis_server.url, "--router", "on",
    ]  # fmt: skip

    def glmserve_path(up_log: Path) -> dict[str, float]:
        return production_path(glm_port, up_log)

    # Alternate the servers round by round so slow drifts of this shared machine hit both alike.
    results: dict[str, LoadResult] = {"bare vLLM": LoadResult(0.0), "glmserve": LoadResult(0.0)}
    by_round: list[float] = []  # glmserve/bare throughput of each round
    path_by_round: list[dict[str, float]] = []  # what glmserve's router and ingress counted each round
    try:
        for round_no in range(args.rounds):
            throughput = {}
            for name, cmd, port in (("bare vLLM", bare_cmd, vllm_port), ("glmserve", glm_cmd, glm_port)):
                log(f"round {round_no + 1}/{args.rounds}")
                run, counted = measure(
                    name.replace(" ", "-"),
                    cmd,
                    health=f"http://127.0.0.1:{port}/health",
                    base=f"http://127.0.0.1:{port}/v1",
                    texts=texts,
                    args=args,
                    check=glmserve_path if name == "glmserve" else None,
                )
                results[name].requests += run.requests
                results[name].wall_s += run.wall_s
                throughput[name] = run.summary()["throughput_tok_s"]
            by_round.append(throughput["glmserve"] / throughput["bare vLLM"])
            path_by_round.append(counted)
            sent = 8 + len(texts)  # warm-up and measured requests of this glmserve process
            if (
                counted["router_allowed"] < sent
                or counted["ingress_router_fallbacks"]
                or counted["router_fail_open"]
                or counted["router_store_up"] != 1
            ):
                raise RuntimeError(f"glmserve did not serve every request through the router and Redis: {counted}")
    finally:
        redis_server.stop()
    bare, glm = results["bare vLLM"].summary(), results["glmserve"].summary()
    ratios: dict[str, Any] = {
        "throughput_ratio": glm["throughput_tok_s"] / bare["throughput_tok_s"],
        "ttft_p50_overhead_ms": glm["ttft_p50_ms"] - bare["ttft_p50_ms"],
        "ttft_p90_overhead_ms": glm["ttft_p90_ms"] - bare["ttft_p90_ms"],
        "itl_p50_ratio": glm["itl_p50_ms"] / bare["itl_p50_ms"],
        "throughput_ratio_by_round": by_round,
    }
    last = path_by_round[-1]
    headers = ["server", "ok/requests", "throughput tok/s", "TTFT p50 ms", "TTFT p90 ms", "ITL p50 ms", "ITL p99 ms"]
    rows = [
        [n, f"{s['ok']}/{s['requests']}", s["throughput_tok_s"], s["ttft_p50_ms"], s["ttft_p90_ms"], s["itl_p50_ms"],
         s["itl_p99_ms"]]
        for n, s in (("bare vLLM", bare), ("glmserve", glm))
    ]  # fmt: skip
    md = (
        f"# glmserve vs bare vLLM ({args.rounds} x {args.requests} requests, concurrency {args.concurrency}, "
        f"{args.prompt_words}-word prompts, {args.max_tokens} output tokens, {MODEL} on CPU, "
        f"glmserve's stream interval {args.stream_interval_ms} ms)\n\n"
        + markdown_table(headers, rows)
        + f"\nThroughput ratio glmserve/vLLM: **{ratios['throughput_ratio']:.3f}** (goal >= 0.95); "
        f"p50 TTFT overhead: **{ratios['ttft_p50_overhead_ms']:+.1f} ms** (goal <= 5 ms).\n\n"
        f"Throughput ratio of each round: {', '.join(f'{r:.3f}' for r in by_round)}.\n\n"
        "glmserve ran its production path: an API key from a tenants file, the plan's limits in a local "
        "redis-server (never binding), the router admitting, queueing and routing every request; its last "
        f"round's router counted {last['router_allowed']:.0f} admissions allowed for {8 + len(texts)} requests "
        f"(warm-up included), {last['router_refused']:.0f} refused, {last['router_fail_open']:.0f} decided "
        f"without Redis, and the ingress {last['ingress_router_fallbacks']:.0f} requests sent without the router. "
        "Bare vLLM and glmserve both serve plain HTTP here (no TLS).\n"
        + (
            f"\nglmserve sends a stream's tokens in batches, at most one per {args.stream_interval_ms} ms after "
            "the first token, so most of its inter-token gaps are the ~0 ms between tokens of one batch.\n"
            if args.stream_interval_ms
            else ""
        )
    )
    data = {
        "args": vars(args),
        "ratios": ratios,
        "production_path_by_round": path_by_round,
        "runs": {n: r.to_json() for n, r in results.items()},
    }
    for path in write("serving_overhead", data, md, lambda p: plot(results, p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
