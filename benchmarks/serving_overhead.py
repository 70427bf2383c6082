"""glmserve's serving path vs bare vLLM's OpenAI server: same checkpoint, engine args and load.

    python -m benchmarks.serving_overhead [--requests 64] [--concurrency 8] [--max-tokens 64]

Starts bare vLLM (`python -m vllm.entrypoints.openai.api_server`), measures, stops it; then
`glmserve up`, measures, stops it. Reports the ratios (this machine is noisy; only ratios
taken in one run are compared) and writes benchmarks/results/serving_overhead.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadResult, prompts, run_load
from benchmarks.results_io import markdown_table, write
from benchmarks.servers import launch, stop, wait_ready
from glmserve.common.config import STREAM_INTERVAL_MS, ServeConfig
from glmserve.serving.engine.args import engine_kwargs
from glmserve.serving.models import resolve_model

MODEL = "glm-4.6-tiny"


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


def measure(
    name: str, cmd: list[str], *, health: str, base: str, texts: list[str], args: argparse.Namespace
) -> LoadResult:
    log(f"starting {name}")
    logfile = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{name}.log", "wb")  # noqa: SIM115
    proc = launch(cmd, logfile)
    try:
        t0 = time.monotonic()
        wait_ready(health, proc)
        log(f"{name} ready after {time.monotonic() - t0:.0f} s; warming up")
        asyncio.run(run_load(base, MODEL, texts[:8], concurrency=args.concurrency, max_tokens=8))

        def progress(done: int, total: int) -> None:
            if done % 16 == 0 or done == total:
                log(f"{name}: {done}/{total} requests")

        result = asyncio.run(
            run_load(base, MODEL, texts, concurrency=args.concurrency, max_tokens=args.max_tokens, progress=progress)
        )
        log(f"{name}: {json.dumps({k: round(v, 2) for k, v in result.summary().items()})}")
        return result
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
    glm_cmd = [
        str(bin_dir / "glmserve"), "up", "--port", str(glm_port), "--stream-interval-ms", str(args.stream_interval_ms)
    ]  # fmt: skip
    # Alternate the servers round by round so slow drifts of this shared machine hit both alike.
    results: dict[str, LoadResult] = {"bare vLLM": LoadResult(0.0), "glmserve": LoadResult(0.0)}
    by_round: list[float] = []  # glmserve/bare throughput of each round
    for round_no in range(args.rounds):
        throughput = {}
        for name, cmd, port in (("bare vLLM", bare_cmd, vllm_port), ("glmserve", glm_cmd, glm_port)):
            log(f"round {round_no + 1}/{args.rounds}")
            run = measure(
                name.replace(" ", "-"),
                cmd,
                health=f"http://127.0.0.1:{port}/health",
                base=f"http://127.0.0.1:{port}/v1",
                texts=texts,
                args=args,
            )
            results[name].requests += run.requests
            results[name].wall_s += run.wall_s
            throughput[name] = run.summary()["throughput_tok_s"]
        by_round.append(throughput["glmserve"] / throughput["bare vLLM"])
    bare, glm = results["bare vLLM"].summary(), results["glmserve"].summary()
    ratios: dict[str, Any] = {
        "throughput_ratio": glm["throughput_tok_s"] / bare["throughput_tok_s"],
        "ttft_p50_overhead_ms": glm["ttft_p50_ms"] - bare["ttft_p50_ms"],
        "ttft_p90_overhead_ms": glm["ttft_p90_ms"] - bare["ttft_p90_ms"],
        "itl_p50_ratio": glm["itl_p50_ms"] / bare["itl_p50_ms"],
        "throughput_ratio_by_round": by_round,
    }
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
        f"Throughput ratio of each round: {', '.join(f'{r:.3f}' for r in by_round)}.\n"
        + (
            f"\nglmserve sends a stream's tokens in batches, at most one per {args.stream_interval_ms} ms after "
            "the first token, so most of its inter-token gaps are the ~0 ms between tokens of one batch.\n"
            if args.stream_interval_ms
            else ""
        )
    )
    data = {"args": vars(args), "ratios": ratios, "runs": {n: r.to_json() for n, r in results.items()}}
    for path in write("serving_overhead", data, md, lambda p: plot(results, p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
