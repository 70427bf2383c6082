"""What running on several hosts costs and how fast it recovers: `glmserve cluster` on examples/cluster-tiny.

    sudo python -m benchmarks.cluster [--prompts 8] [--words 600] [--kills 3]

One run, in this order (never two stacks at once: this machine holds one set of engines):
1. same host: `glmserve up --disaggregated` with the example's engine sizes (1 core and 0.25 GiB of
   KV cache per engine): `--prompts` distinct long prompts (`--words` words, 2 output tokens), one at
   a time: TTFT, and NIXL's transfer time per KV token on the decode engine (vLLM's metrics);
2. `glmserve cluster up -f examples/cluster-tiny`: seconds from the command to RUNNING, and to the
   first streamed token of a request sent as soon as it prints the base URL;
3. cross host: the same prompts through the cluster (prefill and decode on different hosts, KV over
   UCX on TCP across the bridge), measured the same way on the decode host;
4. one of the example's two decode hosts killed `--kills` times (SIGKILL of every process of its
   host) under steady load, each time once both decode replicas run: a short request every
   `--probe-every` s and 2 open streams. Per kill: requests lost (requests that failed and streams
   that did not complete), streams moved by request migration, seconds from the kill to the first
   request sent after it that succeeded, and until both decode replicas run again; medians.
Needs root (network namespaces). Writes benchmarks/results/cluster.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.loadgen import percentile, prompts, stream_request
from benchmarks.pd_interference import nixl_totals
from benchmarks.results_io import markdown_table, write
from benchmarks.servers import launch, stop, wait_ready
from tests.cluster.conftest import EXAMPLE, GLMSERVE, MODELS, MODELS_CLAIM, RunningCluster, example_api_keys, glmserve

MODEL = "glm-4.6-tiny"
SAME_HOST_PORT = 8204
RAY_METRICS_PORT = 8080  # every Ray host's metrics export (the operator's pod template)
STREAMS = 2
STREAM_TOKENS = 400
RECOVER_WITHIN_S = 300.0
DECODE_REPLICAS = 2  # examples/cluster-tiny


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    sent_s: float  # from the kill
    done_s: float
    ok: bool
    what: str  # "probe" or "stream"


async def _ttfts(client: httpx.AsyncClient, base: str, texts: list[str]) -> list[float]:
    """Each prompt streamed alone (2 output tokens): its time to first token."""
    out = []
    for i, text in enumerate(texts):
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 2,
                "temperature": 0, "stream": True}  # fmt: skip
        result = await stream_request(client, f"{base}/chat/completions", body)
        if result.status != 200:
            raise RuntimeError(f"prompt {i}: HTTP {result.status}")
        out.append(result.ttft_s)
        log(f"  prompt {i + 1}/{len(texts)}: TTFT {1000 * result.ttft_s:.0f} ms")
    return out


def _nixl_totals(metrics_urls: list[str]) -> dict[str, float]:
    """NIXL's counters summed over the decode engines (the router picks one per request)."""
    totals: dict[str, float] = {}
    for url in metrics_urls:
        for k, v in nixl_totals(url).items():
            totals[k] = totals.get(k, 0.0) + v
    return totals


def kv_and_ttft(base: str, key: str | None, metrics_urls: list[str], texts: list[str]) -> dict[str, Any]:
    async def run() -> list[float]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(timeout=300, headers=headers) as client:
            await _ttfts(client, base, ["warm-up: " + texts[0][:200]])
            return await _ttfts(client, base, texts)

    before = _nixl_totals(metrics_urls)
    ttfts = asyncio.run(run())
    time.sleep(12)  # Ray exports the engines' metrics every few seconds
    nixl = {k: v - before[k] for k, v in _nixl_totals(metrics_urls).items()}
    tokens = nixl["external_tokens"]
    return {
        "ttft_s": ttfts,
        "ttft_p50_ms": 1000 * percentile(sorted(ttfts), 50),
        "kv_tokens": tokens,
        "kv_bytes": nixl["bytes"],
        "kv_transfers": nixl["xfers"],
        "kv_us_per_token": 1e6 * nixl["xfer_s"] / tokens if tokens else float("nan"),
        "kv_bytes_per_token": nixl["bytes"] / tokens if tokens else float("nan"),
    }


def _metrics_url(logfile: Path, proc: subprocess.Popen[bytes], within_s: float = 600) -> str:
    """The engines' metrics URL, printed once every engine is ready (the ingress answers /health before)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and proc.poll() is None:
        for line in logfile.read_text(errors="replace").splitlines():
            if "engine and Ray metrics: " in line:
                return line.split("metrics: ", 1)[1].strip()
        time.sleep(1)
    raise RuntimeError(f"glmserve up was not ready within {within_s:.0f} s (log {logfile})")


def same_host(texts: list[str]) -> dict[str, Any]:
    logfile = Path("/tmp/bench-cluster-same-host.log")
    log(f"same host: glmserve up --disaggregated (log {logfile})")
    cmd = [*GLMSERVE, "up", "--port", str(SAME_HOST_PORT), "--disaggregated", "--kv-cache-gib", "0.25",
           "--prefill-cpus", "1", "--decode-cpus", "1"]  # fmt: skip
    with logfile.open("wb") as out:
        proc = launch(cmd, out)
    try:
        wait_ready(f"http://127.0.0.1:{SAME_HOST_PORT}/health", proc)
        metrics_url = _metrics_url(logfile, proc)
        return kv_and_ttft(f"http://127.0.0.1:{SAME_HOST_PORT}/v1", None, [metrics_url], texts)
    finally:
        stop(proc)


async def _first_token(base: str, key: str) -> None:
    """Asks until a streamed request's first token arrives (the routers may not know the engines yet)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "stream": True}
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(240):
            if (await stream_request(client, f"{base}/chat/completions", body)).status == 200:
                return
            await asyncio.sleep(0.5)
    raise RuntimeError("no streamed token within 2 minutes of RUNNING")


def cluster_up() -> tuple[RunningCluster, dict[str, float]]:
    logfile = Path("/tmp/bench-cluster-up.log")
    log(f"glmserve cluster up -f {EXAMPLE} (progress in {logfile})")
    started = time.monotonic()
    with logfile.open("w") as err:
        process = subprocess.Popen(
            [*GLMSERVE, "cluster", "up", "-f", str(EXAMPLE), "--volume", f"{MODELS_CLAIM}={MODELS}"],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("http://"):
        process.wait(timeout=60)
        raise RuntimeError(f"cluster up failed (exit {process.returncode}): {logfile.read_text()[-3000:]}")
    running = time.monotonic() - started
    cluster = RunningCluster(line.strip(), example_api_keys(EXAMPLE), process, logfile, running, {})
    asyncio.run(_first_token(cluster.base_url, cluster.pro_key))
    first = time.monotonic() - started
    log(f"cluster RUNNING after {running:.0f} s, first token {first:.0f} s after `cluster up`")
    return cluster, {"running_s": running, "first_token_s": first}


async def _probe(client: httpx.AsyncClient, base: str, killed: float) -> Outcome:
    sent = time.monotonic()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 4}
    try:
        ok = (await client.post(f"{base}/chat/completions", json=body, timeout=30)).status_code == 200
    except httpx.HTTPError:
        ok = False
    return Outcome(sent - killed, time.monotonic() - killed, ok, "probe")


async def _long_stream(client: httpx.AsyncClient, base: str, i: int, started: asyncio.Event) -> tuple[float, bool]:
    """(when it ended, monotonic; whether every token arrived): an error event or a cut is a loss."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"a long answer {i}"}],
            "max_tokens": STREAM_TOKENS, "ignore_eos": True, "stream": True}  # fmt: skip
    chunks, failed = 0, False
    try:
        async with client.stream("POST", f"{base}/chat/completions", json=body, timeout=120) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                    started.set()
                    failed = failed or "error" in json.loads(line[6:])
            failed = failed or response.status_code != 200
    except httpx.HTTPError:
        failed = True
    started.set()
    return time.monotonic(), not failed and chunks > 0


def _full_decode_pool(cluster: RunningCluster) -> None:
    deadline = time.monotonic() + RECOVER_WITHIN_S
    while sum(d.startswith("Decode:") for d in cluster.replicas().values()) < DECODE_REPLICAS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the decode pool was not back to {DECODE_REPLICAS} replicas")
        time.sleep(2)


def kill_decode(cluster: RunningCluster, probe_every_s: float) -> dict[str, Any]:
    _full_decode_pool(cluster)
    moves_before = cluster.migrations()

    async def run() -> tuple[dict[str, Any], float]:
        decode = min((h for h in cluster.hosts(pool="decode") if h["pids"]), key=lambda h: h["name"])
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {cluster.pro_key}"}) as client:
            starts = [asyncio.Event() for _ in range(STREAMS)]
            streams = [asyncio.create_task(_long_stream(client, cluster.base_url, i, s)) for i, s in enumerate(starts)]
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in starts)), timeout=120)
            cluster.kill_host(decode["name"])  # seconds of `cluster status` first; its last step is the SIGKILLs
            killed = time.monotonic()
            probes: list[asyncio.Task[Outcome]] = []
            recovered: float | None = None
            while recovered is None:
                probes.append(asyncio.create_task(_probe(client, cluster.base_url, killed)))
                await asyncio.sleep(probe_every_s)
                recovered = min((p.result().done_s for p in probes if p.done() and p.result().ok), default=None)
                if time.monotonic() - killed > RECOVER_WITHIN_S:
                    raise RuntimeError(f"no request succeeded within {RECOVER_WITHIN_S:.0f} s of the kill")
            outcomes = list(await asyncio.gather(*probes))
            outcomes += [Outcome(-1.0, end - killed, ok, "stream") for end, ok in await asyncio.gather(*streams)]
        lost = sum(not o.ok for o in outcomes)
        log(f"  killed {decode['name']}: {lost} of {len(outcomes)} requests lost, recovered after {recovered:.1f} s")
        return {"host": decode["name"], "recover_s": recovered, "lost": lost, "sent": len(outcomes),
                "outcomes": [asdict(o) for o in outcomes]}, killed  # fmt: skip

    found, killed = asyncio.run(run())
    moved = {k: v - moves_before.get(k, 0) for k, v in cluster.migrations().items()}
    _full_decode_pool(cluster)
    full_pool_s = time.monotonic() - killed
    log(f"  {moved.get('moved', 0):g} streams moved; both decode replicas again {full_pool_s:.0f} s later")
    return found | {"full_pool_s": full_pool_s, "streams_moved": moved.get("moved", 0),
                    "streams_refused": moved.get("refused", 0)}  # fmt: skip


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    modes = ["same host", "cross host"]
    runs = [data["same_host"], data["cross_host"]]
    x = range(len(modes))
    left.bar([i - 0.2 for i in x], [r["ttft_p50_ms"] for r in runs], width=0.4, label="TTFT p50 (ms)")
    left.bar([i + 0.2 for i in x], [r["kv_us_per_token"] for r in runs], width=0.4, label="KV transfer (us/token)")
    left.set_xticks(list(x), modes)
    left.set_title(f"{data['args']['words']}-word prompts, P/D over NIXL")
    left.legend()
    for k, kill in enumerate(data["kills"]):
        for o in kill["outcomes"]:
            at = o["done_s"] if o["what"] == "stream" else o["sent_s"]
            right.plot(at, k + 1, "o" if o["ok"] else "x", color="tab:green" if o["ok"] else "tab:red", ms=4)
        right.axvline(kill["recover_s"], ymin=(k + 0.1) / len(data["kills"]), ymax=(k + 0.9) / len(data["kills"]))
    right.set(xlabel="seconds after the decode host's kill (o ok, x lost)", ylabel="kill",
              yticks=range(1, len(data["kills"]) + 1), title="Requests around a decode host's loss")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--words", type=int, default=600)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--probe-every", type=float, default=0.5)
    args = parser.parse_args()
    texts = prompts(args.prompts, args.words, seed=15)

    same = same_host(texts)
    cluster, up = cluster_up()
    try:
        decode = [f"http://{h['ip']}:{RAY_METRICS_PORT}/metrics" for h in cluster.hosts(pool="decode")]
        log("cross host: the same prompts through the cluster")
        cross = kv_and_ttft(cluster.base_url, cluster.pro_key, decode, [f"cluster {t}" for t in texts])
        kills = []
        for k in range(args.kills):
            log(f"kill {k + 1}/{args.kills}: the decode host, under load")
            kills.append(kill_decode(cluster, args.probe_every))
    finally:
        log("glmserve cluster down")
        glmserve("cluster", "down", check=False, timeout=300)
        cluster.process.wait(timeout=120)

    recover = statistics.median(k["recover_s"] for k in kills)
    lost = statistics.median(k["lost"] for k in kills)
    full = statistics.median(k["full_pool_s"] for k in kills)
    headers = ["P/D placement", "TTFT p50 ms", "KV us/token", "KV B/token", "KV tokens"]
    rows = [[m, r["ttft_p50_ms"], r["kv_us_per_token"], r["kv_bytes_per_token"], int(r["kv_tokens"])]
            for m, r in (("same host", same), ("cross host", cross))]  # fmt: skip
    md = (
        f"# Multi-host cost and recovery ({MODEL}, examples/cluster-tiny, 2 CPU cores)\n\n"
        f"{args.prompts} distinct {args.words}-word prompts, one at a time, 2 output tokens; same host: "
        "`glmserve up --disaggregated` (1 core, 0.25 GiB KV per engine); cross host: the cluster's prefill "
        "and decode hosts (UCX on TCP across the bridge).\n\n"
        + markdown_table(headers, rows)
        + f"\nCross/same host: TTFT p50 **{cross['ttft_p50_ms'] / same['ttft_p50_ms']:.2f}x**, KV transfer "
        f"per token **{cross['kv_us_per_token'] / same['kv_us_per_token']:.2f}x**.\n\n"
        f"`glmserve cluster up` to RUNNING: **{up['running_s']:.0f} s**; to the first streamed token: "
        f"**{up['first_token_s']:.0f} s**.\n\n"
        f"Decode host killed {args.kills} times under load (a short request every {args.probe_every} s, "
        f"{STREAMS} streams of {STREAM_TOKENS} tokens open on the two decode hosts; streams on the killed "
        "host move to the other one by request migration):\n\n"
        + markdown_table(
            ["kill", "requests lost", "requests sent", "streams moved", "s to recover", "s to both replicas"],
            [
                [i + 1, k["lost"], k["sent"], k["streams_moved"], k["recover_s"], k["full_pool_s"]]
                for i, k in enumerate(kills)
            ],
        )
        + f"\nMedian: **{lost:g} requests lost, {recover:.1f} s to recover** (kill to the first request "
        f"sent after it that succeeded), **{full:.0f} s** until both decode replicas run again (the pod "
        "replaced, its engine loaded).\n"
    )
    data = {"args": vars(args), "same_host": same, "cross_host": cross, "cluster_up": up, "kills": kills,
            "median_recover_s": recover, "median_lost": lost, "median_full_pool_s": full}  # fmt: skip
    for path in write("cluster", data, md, lambda p: plot(data, p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
