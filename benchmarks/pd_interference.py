"""Decode latency while long prompts keep arriving: disaggregated prefill/decode vs colocated.

    python -m benchmarks.pd_interference [--duration 40] [--streams 4] [--long-words 1500]

Each mode runs the same mix for the same time: `--streams` chat streams that decode
`--decode-tokens` tokens each, back to back (their inter-token latency is what we measure),
while a long-prompt request (`--long-words` words, 1 output token) arrives every
`--long-every` seconds. Colocated: one engine on all cores. Disaggregated: a prefill engine
and a decode engine pinned to disjoint cores, KV moved by NIXL. Also reports the KV-transfer
time per token and its share of the long prompts' TTFT (from vLLM's NIXL metrics).
Writes benchmarks/results/pd_interference.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.loadgen import RequestResult, percentile, prompts, stream_request
from benchmarks.results_io import markdown_table, write
from benchmarks.servers import launch, stop, wait_ready

MODEL = "glm-4.6-tiny"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


async def _stream(client: httpx.AsyncClient, url: str, text: str, max_tokens: int) -> RequestResult:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    return await stream_request(client, url, body)


async def run_mix(base: str, args: argparse.Namespace) -> dict[str, list[RequestResult]]:
    url = f"{base}/chat/completions"
    deadline = time.monotonic() + args.duration
    decode: list[RequestResult] = []
    long: list[RequestResult] = []
    long_texts = prompts(1000, args.long_words, seed=1)  # distinct, so no prefix-cache hits

    async def streamer(client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            decode.append(await _stream(client, url, f"stream {i} turn {n}: tell me a story", args.decode_tokens))
            n += 1

    async def long_prompts(client: httpx.AsyncClient) -> None:
        tasks = []
        for i in range(10_000):
            if time.monotonic() >= deadline:
                break
            tasks.append(asyncio.create_task(_stream(client, url, long_texts[i % len(long_texts)], 2)))
            await asyncio.sleep(args.long_every)
        long.extend(await asyncio.gather(*tasks))

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        await asyncio.gather(long_prompts(client), *(streamer(client, i) for i in range(args.streams)))
    return {"decode": decode, "long": long}


def nixl_totals(metrics_url: str) -> dict[str, float]:
    text = httpx.get(metrics_url, timeout=10).text
    want = {
        "ray_vllm_nixl_xfer_time_seconds_sum": "xfer_s",
        "ray_vllm_nixl_xfer_time_seconds_count": "xfers",
        "ray_vllm_nixl_bytes_transferred_sum": "bytes",
    }
    out = dict.fromkeys(want.values(), 0.0) | {"external_tokens": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in want:
                out[want[s.name]] += s.value
            if s.name == "ray_vllm_prompt_tokens_by_source_total" and s.labels.get("source") == "external_kv_transfer":
                out["external_tokens"] += s.value
    return out


def measure(mode: str, flags: list[str], port: int, args: argparse.Namespace) -> dict[str, Any]:
    log(f"starting {mode}")
    logfile = Path("/tmp") / f"bench-pd-{mode}.log"
    cmd = [str(Path(sys.executable).parent / "glmserve"), "up", "--port", str(port), *flags]
    with logfile.open("wb") as out:
        proc = launch(cmd, out)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc)
        base = f"http://127.0.0.1:{port}/v1"
        asyncio.run(run_mix(base, argparse.Namespace(**{**vars(args), "duration": 5})))  # warm-up
        metrics_url = next(
            line.split("metrics: ", 1)[1].strip()
            for line in logfile.read_text(errors="replace").splitlines()
            if "engine and Ray metrics: " in line
        )
        before = nixl_totals(metrics_url)
        log(f"{mode}: measuring for {args.duration} s")
        results = asyncio.run(run_mix(base, args))
        time.sleep(12)  # Ray exports metrics every few seconds
        after = nixl_totals(metrics_url)
        return {"results": results, "nixl": {k: after[k] - before[k] for k in after}}
    finally:
        stop(proc)


def summarize(run: dict[str, Any]) -> dict[str, float]:
    decode = [r for r in run["results"]["decode"] if r.status == 200]
    long = [r for r in run["results"]["long"] if r.status == 200]
    itl = sorted(x for r in decode for x in r.itls_s)
    ttft = sorted(r.ttft_s for r in long)
    nixl = run["nixl"]
    xfer_per_req = nixl["xfer_s"] / nixl["xfers"] if nixl["xfers"] else 0.0
    return {
        "decode_streams_done": len(decode),
        "long_prompts_done": len(long),
        "itl_p50_ms": 1000 * percentile(itl, 50),
        "itl_p90_ms": 1000 * percentile(itl, 90),
        "itl_p99_ms": 1000 * percentile(itl, 99),
        "long_ttft_p50_ms": 1000 * percentile(ttft, 50),
        "kv_tokens_transferred": nixl["external_tokens"],
        "kv_bytes_transferred": nixl["bytes"],
        "kv_transfer_us_per_token": 1e6 * nixl["xfer_s"] / nixl["external_tokens"] if nixl["external_tokens"] else 0.0,
        "kv_transfer_share_of_long_ttft": xfer_per_req / percentile(ttft, 50) if ttft and nixl["xfers"] else 0.0,
    }


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, run in runs.items():
        itl = sorted(1000 * x for r in run["results"]["decode"] if r.status == 200 for x in r.itls_s)
        ax.plot(itl, [i / len(itl) for i in range(len(itl))], label=mode)
    ax.set(xscale="log", xlabel="decode inter-token latency (ms)", ylabel="fraction of tokens",
           title="Decode ITL while long prompts arrive")  # fmt: skip
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=40)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--decode-tokens", type=int, default=96)
    parser.add_argument("--long-words", type=int, default=1500)
    parser.add_argument("--long-every", type=float, default=1.5)
    args = parser.parse_args()

    runs = {
        "colocated": measure("colocated", [], 8201, args),
        "disaggregated": measure("disaggregated", ["--disaggregated"], 8202, args),
    }
    summary = {mode: summarize(run) for mode, run in runs.items()}
    ratio = summary["disaggregated"]["itl_p99_ms"] / summary["colocated"]["itl_p99_ms"]
    headers = ["mode", "decode streams", "long prompts", "ITL p50 ms", "ITL p90 ms", "ITL p99 ms", "long TTFT p50 ms"]
    rows = [
        [m, s["decode_streams_done"], s["long_prompts_done"], s["itl_p50_ms"], s["itl_p90_ms"], s["itl_p99_ms"],
         s["long_ttft_p50_ms"]]
        for m, s in summary.items()
    ]  # fmt: skip
    pd = summary["disaggregated"]
    md = (
        f"# Decode ITL under long-prompt arrivals ({args.streams} decode streams x {args.decode_tokens} tokens, "
        f"a {args.long_words}-word prompt every {args.long_every} s, {args.duration:.0f} s per mode, "
        f"{MODEL} on 2 CPU cores)\n\n"
        + markdown_table(headers, rows)
        + f"\nDecode ITL p99 disaggregated/colocated: **{ratio:.2f}x** (goal <= 0.5x).\n"
        f"KV transfer (NIXL over UCX, CPU): {pd['kv_tokens_transferred']:.0f} tokens, "
        f"{pd['kv_bytes_transferred'] / 2**20:.1f} MiB, **{pd['kv_transfer_us_per_token']:.1f} us per token**, "
        f"**{100 * pd['kv_transfer_share_of_long_ttft']:.1f}%** of a long prompt's median TTFT.\n"
    )
    data = {
        "args": vars(args),
        "itl_p99_ratio": ratio,
        "summary": summary,
        "runs": {m: {k: [asdict(r) for r in v] for k, v in run["results"].items()} for m, run in runs.items()},
    }
    for path in write("pd_interference", data, md, lambda p: plot(runs, p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
