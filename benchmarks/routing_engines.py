"""Routing quality on real vLLM-CPU engines: glmserve's precise and approximate routing, round-robin,
Ray Serve's own request routers, and an oracle.

    python -m benchmarks.routing_engines [--replicas 4] [--routers 2] [--tenants 20] [--sessions 96]
                                         [--rounds 3] [--kv-cache-gib 0.03] [--load 0.3 | --session-rate R]
                                         [--policies precise ... ray-power-of-two]

One `glmserve up --replicas N` serves every policy. Its ingress asks `--routers` replicas of
`glmserve router serve` (the operator's default is 2 router pods; the ingress sends successive
requests to each in turn, and the engines register with each). Before each phase the routers are
restarted with the phase's policy, and the engines register again, as after any router restart.
Approximate routing keeps its guesses in each router replica's own memory (as llm-d's approximate
scorer does per scheduler replica): each replica sees every other request of a session, places a
tenant it has not seen yet on its own, and never learns where the other sent what, nor what the
engines evicted. Precise routing's replicas share the engines' own KV events.

Ray Serve's routers are its peers here, configured as Ray's docs configure them: on the engines'
deployment (`request_router_config`), with Ray's defaults, and without glmserve's router
(`glmserve up --config` with `router: off`): `ray-power-of-two` is Serve's default
PowerOfTwoChoicesRequestRouter, `ray-prefix-affinity` Ray Serve LLM's PrefixCacheAffinityRouter
(`serve_router: prefix-affinity`). A deployment's router is fixed in every handle once it has
routed, so each Ray phase runs on a stack of its own (the same flags, engines and cores), started
fresh, which also gives the prefix router an empty prefix tree as the glmserve routers get empty
indexes. Every stack start is followed by a calibration (below), which warms its engines and
shows how fast each stack's engines were.

The policies take turns for `--rounds` rounds, each round in a rotated order (glmserve's policies
on one stack, each Ray router on its own), so that a slow spell of this shared machine, or being
first after the calibration, lands on every policy alike. A stack per policy measured the engines
30% faster in one policy's stack than in another's: the calibrations say how far each stack's
engines differed.

Each phase drives the same seeded multi-tenant agentic workload (benchmarks/workload.py: tenants
with long shared contexts, multi-turn sessions, token-id prompts on /v1/completions, 1 output
token, so latency is TTFT), its token ids mapped through a fresh permutation of the vocabulary:
the same lengths, timing and sharing, and no block that an earlier phase left in the caches.
Prompts are sent as text whose tokens are exactly the workload's: the vocabulary is the
tokenizer's space-led word tokens, each of which a tokenizer encodes back to itself in any
sequence (checked at start; the engines' reported prompt lengths are checked per request). Ray's
prefix router matches prompt text and sees nothing in a list of token ids.

Each engine's KV cache is small (`--kv-cache-gib`): 0.03 GiB is about 15.7K tokens of
glm-4.6-tiny, and the 20 tenants' contexts are about 44K tokens. The engines can hold every
context once (a quarter, ~11K tokens, each), but not twice, and no engine can hold all of them,
as each of llm-d's pods held a fraction of its benchmark's tenants. So where a request lands
decides whether its prefix is cached. Each tenant's first request finds nothing cached under any
policy; with 96 sessions those are 5% of the requests, so a P90 compares routing, not compulsory
misses. The oracle's hit rate is the bound no router can beat: each prompt's longest prefix shared
with any earlier prompt (whole blocks), as if one infinite cache served all.

Offered load is set from this machine's measured speed, not a fixed rate: these machines' speed
varied 2x between sessions, and a fixed rate that one day leaves round-robin barely overloaded
collapses every policy into queueing on a slower day. The stack first measures its prefill
capacity (tokens/s with every engine busy on cold prompts of the workload's mean length), and the
session rate is the one at which the oracle's uncached prompt tokens would keep the engines
`--load` busy (`--session-rate` fixes the rate instead). Capacity is measured again at the end.

Writes benchmarks/results/routing_engines.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import yaml

from benchmarks.loadgen import percentile
from benchmarks.results_io import markdown_table, write
from benchmarks.servers import launch, samples, stop, wait_ready
from benchmarks.workload import Session, WorkloadConfig, generate
from glmserve.common.catalogue import TINY_MODEL
from glmserve.common.config import ROUTER_HASHING
from glmserve.common.metrics import INGRESS_ROUTER_FALLBACKS, ROUTER_ROUTES, ROUTER_WORKERS
from glmserve.common.ports import free_port
from glmserve.serving.models import resolve_model

MODEL = TINY_MODEL
GLMSERVE_POLICIES = ("precise", "approximate", "round-robin")
# Ray Serve's routers, by the `serve_router` setting that puts each on the engines' deployment.
RAY_POLICIES = {"ray-prefix-affinity": "prefix-affinity", "ray-power-of-two": "power-of-two"}
POLICIES = (*GLMSERVE_POLICIES, *RAY_POLICIES)
GLMSERVE_STACK = "glmserve"
# The goals, reported against (not asserted): precise P90 TTFT this many times better.
P90_GOALS = {"ray-prefix-affinity": 3.0, "ray-power-of-two": 10.0}
HIT_RATE_GOAL = 0.95  # precise hit rate / oracle's
BLOCK = 128  # vLLM-CPU's default block size: prefix-cache hits come in whole blocks
GLMSERVE = str(Path(sys.executable).parent / "glmserve")


def stack_of(policy: str) -> str:
    return RAY_POLICIES.get(policy, GLMSERVE_STACK)


@dataclasses.dataclass(frozen=True, slots=True)
class Words:
    """The workload's vocabulary as text: token i is `words[i]`, a space-led word that the
    tokenizer encodes back to one token, `ids[i]`, wherever it stands in a prompt."""

    words: np.ndarray  # str
    ids: np.ndarray  # the tokenizer's id of each word

    @property
    def vocab(self) -> int:
        return len(self.words)

    def text(self, tokens: np.ndarray) -> str:
        return "".join(self.words[tokens])

    @classmethod
    def of_model(cls, seed: int) -> Words:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL, progress=log).path)
        vocab = sorted((i, t) for t, i in tokenizer.get_vocab().items())
        # Byte-level BPE marks a leading space with "Ġ"; plain ASCII letters never merge across it.
        candidates = [(i, " " + t[1:]) for i, t in vocab if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha()]
        single = [(i, w) for i, w in candidates if tokenizer.encode(w, add_special_tokens=False) == [i]]
        words = cls(np.array([w for _, w in single]), np.array([i for i, _ in single]))
        sample = np.random.default_rng(seed).integers(0, words.vocab, 20_000)
        if tokenizer.encode(words.text(sample)) != words.ids[sample].tolist():
            raise RuntimeError("the tokenizer does not encode the word vocabulary back to the same tokens")
        return words


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def workload(args: argparse.Namespace, session_rate: float, vocab: int) -> list[Session]:
    """The same tokens at any rate: the rate only scales the session start times."""
    return generate(
        WorkloadConfig(
            seed=args.seed,
            tenants=args.tenants,
            sessions=args.sessions,
            turns=args.turns,
            session_rate_per_s=session_rate,
            context_tokens=(1500, 3000),
            user_tokens=(50, 200),
            output_tokens=(16, 48),
            think_s=1.0,
            vocab=vocab,
        )
    )


def relabel(sessions: list[Session], seed: list[int], vocab: int) -> list[Session]:
    """The same sessions with every token id mapped through one random permutation of the vocabulary."""
    perm = np.random.default_rng(seed).permutation(vocab).astype(np.uint32)
    return [
        dataclasses.replace(
            s,
            context=perm[s.context],
            turns=tuple(dataclasses.replace(t, user=perm[t.user], output=perm[t.output]) for t in s.turns),
        )
        for s in sessions
    ]


def prompt_tokens(sessions: list[Session]) -> list[int]:
    return [len(s.prompt(k)) for s in sessions for k in range(len(s.turns))]


def oracle_hit_rate(sessions: list[Session], block: int = BLOCK) -> float:
    """Cached share of prompt tokens if every prompt found its longest earlier prefix (arrival order)."""
    prompts = sorted(((s.start_s + k, s.prompt(k)) for s in sessions for k in range(len(s.turns))), key=lambda p: p[0])
    seen: set[int] = set()
    cached = total = 0
    for _, ids in prompts:
        chain, parent = [], 0
        for n in range((len(ids) - 1) // block):  # the last token is always computed, as in vLLM
            parent = hash((parent, ids[n * block : (n + 1) * block].tobytes()))
            chain.append(parent)
        hit = next((n for n in range(len(chain), 0, -1) if chain[n - 1] in seen), 0)
        cached, total = cached + hit * block, total + len(ids)
        seen.update(chain)
    return cached / total


def rate_for_load(args: argparse.Namespace, capacity_tok_s: float, vocab: int) -> float:
    """At rate r the sessions arrive over sessions / r seconds, bringing the oracle's uncached
    tokens U at U * r / sessions tokens/s: r = load * capacity * sessions / U."""
    sessions = workload(args, 1.0, vocab)
    uncached = sum(prompt_tokens(sessions)) * (1 - oracle_hit_rate(sessions))
    return float(args.load * capacity_tok_s * args.sessions / uncached)


async def _complete(client: httpx.AsyncClient, base: str, prompt: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    return await client.post(f"{base}/completions", json=body)


async def calibrate(base: str, replicas: int, tokens: int, rng: np.random.Generator, words: Words) -> float:
    """Prefill tokens/s of the stack with every engine busy: 3 cold prompts of `tokens` tokens per
    engine at once, after one per engine unmeasured (a fresh engine's first prompt of a size pays
    one-off costs). The prompts share no block with the workload's or each other's."""

    def cold(n: int) -> str:
        return words.text(rng.integers(0, words.vocab, n))

    async with httpx.AsyncClient(timeout=600) as client:
        for reply in await asyncio.gather(*(_complete(client, base, cold(tokens)) for _ in range(replicas))):
            reply.raise_for_status()
        start = time.perf_counter()
        replies = await asyncio.gather(*(_complete(client, base, cold(tokens)) for _ in range(3 * replicas)))
        elapsed = time.perf_counter() - start
    for reply in replies:
        reply.raise_for_status()
    return 3 * replicas * tokens / elapsed


async def drive(base: str, sessions: list[Session], words: Words) -> list[dict[str, Any]]:
    """Every session on its own schedule; the next turn follows the reply after the think time."""
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    total = sum(len(s.turns) for s in sessions)

    async def session(client: httpx.AsyncClient, s: Session) -> None:
        await asyncio.sleep(max(0.0, s.start_s - (time.monotonic() - t0)))
        for k, turn in enumerate(s.turns):
            start = time.perf_counter()
            tokens = s.prompt(k)
            reply = await _complete(client, base, words.text(tokens))
            latency = time.perf_counter() - start
            body = reply.json()
            usage = (body.get("usage") or {}) if reply.status_code == 200 else {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            results.append(
                {
                    "status": reply.status_code,
                    "ttft_s": latency,
                    "prompt": usage.get("prompt_tokens", 0),
                    "tokens_sent": len(tokens),
                    "cached": cached,
                    **({"error": body.get("error")} if reply.status_code != 200 else {}),
                }
            )
            await asyncio.sleep(turn.think_s)

    async def progress() -> None:
        while True:
            await asyncio.sleep(15)
            log(f"  {len(results)}/{total} requests after {time.monotonic() - t0:.0f} s")

    reporter = asyncio.create_task(progress())
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=512)) as client:
        await asyncio.gather(*(session(client, s) for s in sessions))
    reporter.cancel()
    return results


def distinct_ports(n: int) -> list[int]:
    """`n` free ports, no two alike (each pick alone may repeat an earlier one)."""
    ports: dict[int, None] = {}
    while len(ports) < n:
        ports[free_port()] = None
    return list(ports)


class Stack:
    """One `glmserve up` at a time. glmserve's stack has an ingress that asks router processes on
    fixed ports; its routers are replaced by ones running another policy between phases. A Ray
    policy's stack runs without glmserve's router, its engines' deployment set to that router."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        ports = distinct_ports(2 * args.routers)
        self.router_ports = list(zip(ports[::2], ports[1::2], strict=True))  # gRPC, metrics
        self.kind: str | None = None  # glmserve's stack, or a Ray router's
        self.port = 0
        self._routers: list[subprocess.Popen[bytes]] = []
        self._up: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self._started = 0
        self._stacks = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _log_file(self, name: str) -> IO[bytes]:
        self._logs.append((self.workdir / name).open("wb"))
        return self._logs[-1]

    def serve(self, policy: str) -> bool:
        """Ready for a phase of `policy`; True when that took a fresh stack. glmserve's policies
        share a stack (new routers); each Ray phase gets a fresh stack of its own."""
        if stack_of(policy) == GLMSERVE_STACK == self.kind:
            self.start_routers(policy)
            self.await_routers()
            return False
        self.stop_stack()
        self.start(policy)
        return True

    def start(self, policy: str) -> None:
        a = self.args
        self.kind, self.port = stack_of(policy), free_port()
        self._stacks += 1
        command = [GLMSERVE, "up", "--port", str(self.port), "--replicas", str(a.replicas),
                   "--kv-cache-gib", str(a.kv_cache_gib)]  # fmt: skip
        if self.kind == GLMSERVE_STACK:
            self.start_routers(policy)
            command += ["--router-address", "ipv4:" + ",".join(f"127.0.0.1:{grpc}" for grpc, _ in self.router_ports)]
        else:
            config = self.workdir / f"up-{self._stacks}-{policy}.yaml"
            config.write_text(yaml.safe_dump({"router": "off", "serve_router": self.kind}))
            command += ["--config", str(config)]
        self._up = launch(command, self._log_file(f"up-{self._stacks}-{self.kind}.log"))
        started = time.monotonic()
        wait_ready(f"http://127.0.0.1:{self.port}/health", self._up)
        log(f"{self.kind} stack: {a.replicas} engines ready after {time.monotonic() - started:.0f} s")
        if self.kind == GLMSERVE_STACK:
            self.await_routers()

    def start_routers(self, policy: str) -> None:
        self.stop_routers()
        self._started += 1
        for n, (grpc_port, metrics_port) in enumerate(self.router_ports):
            config = self.workdir / f"router-{self._started}-{policy}-{n}.yaml"
            config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": grpc_port, "metrics_port": metrics_port,
                                              "policy": policy, "hashing": ROUTER_HASHING}))  # fmt: skip
            command = [GLMSERVE, "router", "serve", "--config", str(config)]
            self._routers.append(launch(command, self._log_file(f"{config.stem}.log")))

    def _router_sum(self, metrics_port: int, name: str, **labels: str) -> float:
        try:
            found = samples(f"http://127.0.0.1:{metrics_port}/metrics", name)
        except httpx.HTTPError:
            return 0.0
        return sum(s.value for s in found if labels.items() <= s.labels.items())

    def await_routers(self, timeout_s: float = 120) -> None:
        """Until every engine is registered with every router (they find out on their next
        heartbeat), then until the ingress reaches each router (gRPC reconnects with back-off):
        short requests until each router has routed one."""
        deadline = time.monotonic() + timeout_s
        rng = np.random.default_rng()

        async def probe() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                await _complete(client, self.base, "".join(f" probe{n}" for n in rng.integers(0, 1000, 16)))

        def wait(what: str, done: Callable[[int], bool], step: Callable[[], None]) -> None:
            for _, metrics_port in self.router_ports:
                while not done(metrics_port):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"router on metrics port {metrics_port}: {what} after {timeout_s} s")
                    step()

        wait(
            "engines not registered",
            lambda port: (
                self._router_sum(port, ROUTER_WORKERS.name, role="decode", state="healthy") >= self.args.replicas
            ),
            lambda: time.sleep(0.5),
        )
        wait("no request routed", lambda port: self._router_sum(port, ROUTER_ROUTES.name) >= 1,
             lambda: asyncio.run(probe()))  # fmt: skip

    def fallbacks(self) -> float:
        found = samples(f"http://127.0.0.1:{self.port}/metrics", INGRESS_ROUTER_FALLBACKS.name)
        return sum(s.value for s in found)

    def stop_routers(self) -> None:
        for router in self._routers:
            stop(router)
        self._routers = []

    def stop_stack(self) -> None:
        if self._up is not None:
            stop(self._up)
            self._up = None
        self.stop_routers()
        self.kind = None

    def stop(self) -> None:
        self.stop_stack()
        for f in self._logs:
            f.close()


def summary(results: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in results if r["status"] == 200]
    ttft = sorted(r["ttft_s"] * 1000 for r in ok)
    prompt = sum(r["prompt"] for r in ok)
    return {
        "ok": len(ok),
        "sent": len(results),
        # Requests whose prompt the engine counted otherwise than the workload's tokens.
        "token_mismatches": sum(r["prompt"] != r["tokens_sent"] for r in ok),
        "hit_rate": sum(r["cached"] for r in ok) / prompt if prompt else 0.0,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p90_ms": percentile(ttft, 90),
        "ttft_p99_ms": percentile(ttft, 99),
    }


def ratios(table: dict[str, dict[str, float]], oracle: float) -> dict[str, float]:
    if "precise" not in table:
        return {}
    p90 = table["precise"]["ttft_p90_ms"]
    out = {f"p90 TTFT {other} / precise": table[other]["ttft_p90_ms"] / p90 for other in table if other != "precise"}
    out["precise hit rate / oracle"] = table["precise"]["hit_rate"] / oracle
    return out


def goals(pooled_ratios: dict[str, float]) -> list[list[Any]]:
    """The issue's goals against this run's pooled ratios (reported, not asserted)."""
    rows = []
    for policy, goal in P90_GOALS.items():
        if (value := pooled_ratios.get(f"p90 TTFT {policy} / precise")) is not None:
            rows.append([f"precise P90 TTFT better than {policy}'s", f">= {goal:g}x", value, value >= goal])
    if (hit := pooled_ratios.get("precise hit rate / oracle")) is not None:
        rows.append(["precise hit rate / oracle", f">= {HIT_RATE_GOAL}", hit, hit >= HIT_RATE_GOAL])
    return [[*row[:3], "met" if row[3] else "not met"] for row in rows]


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for policy, results in runs.items():
        ttft = sorted(r["ttft_s"] * 1000 for r in results if r["status"] == 200)
        ax.plot(ttft, np.arange(len(ttft)) / max(len(ttft), 1), label=policy)
    ax.set(xscale="log", xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT by routing policy (vLLM-CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--routers", type=int, default=2, help="router replicas (the operator's default: 2)")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=96)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="phases per policy, in a rotated order each round")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument(
        "--load",
        type=positive,
        default=0.3,
        help="offered load: the oracle's uncached prompt tokens/s as a share of the measured prefill capacity",
    )
    rate.add_argument("--session-rate", type=positive, help="sessions started per second, instead of --load")
    parser.add_argument("--kv-cache-gib", type=float, default=0.03, help="per engine: small, so caches compete")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(POLICIES),
        choices=POLICIES,
        help="glmserve's policies, then Ray Serve's request routers (each on a stack of its own)",
    )
    args = parser.parse_args()
    for name in ("replicas", "routers", "tenants", "sessions", "turns", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if len(set(args.policies)) != len(args.policies):
        parser.error("--policies must not name a policy twice")
    return args


def rotated(items: list[str], by: int) -> list[str]:
    return items[by % len(items) :] + items[: by % len(items)]


def schedule(args: argparse.Namespace) -> list[tuple[int, str]]:
    """(round, policy) in running order: each round rotates the stacks, and the policies that
    share glmserve's stack among themselves."""
    stacks = list(dict.fromkeys(stack_of(p) for p in args.policies))
    return [
        (round_, policy)
        for round_ in range(args.rounds)
        for stack in rotated(stacks, round_)
        for policy in rotated([p for p in args.policies if stack_of(p) == stack], round_)
    ]


def measure(args: argparse.Namespace, stack: Stack, words: Words) -> dict[str, Any]:
    """Every policy's phases in rotated order, each stack calibrated when it starts (the first
    calibration sets the rate), then calibration again at the end."""
    rng = np.random.default_rng([args.seed, 1])
    mean_prompt = int(np.mean(prompt_tokens(workload(args, 1.0, words.vocab))))
    rate: float | None = args.session_rate
    phases: list[dict[str, Any]] = []
    calibrations: list[dict[str, Any]] = []
    for round_, policy in schedule(args):
        if stack.serve(policy):
            capacity = asyncio.run(calibrate(stack.base, args.replicas, mean_prompt, rng, words))
            calibrations.append({"stack": stack.kind, "before_phase": len(phases), "capacity_tok_s": capacity})
            log(f"{stack.kind} stack: prefill capacity {capacity:.0f} tokens/s")
        if rate is None:
            rate = rate_for_load(args, calibrations[0]["capacity_tok_s"], words.vocab)
            log(f"{rate:.2f} sessions/s")
        log(f"round {round_ + 1}/{args.rounds}: {policy}")
        fallbacks = stack.fallbacks()
        sessions = relabel(workload(args, rate, words.vocab), [args.seed, 2, len(phases)], words.vocab)
        results = asyncio.run(drive(stack.base, sessions, words))
        phases.append(
            {"round": round_, "policy": policy, "stack_capacity_tok_s": calibrations[-1]["capacity_tok_s"],
             "router_fallbacks": stack.fallbacks() - fallbacks, "results": results}
        )  # fmt: skip
        done = summary(results)
        log(f"  {policy}: hit rate {done['hit_rate']:.1%}, TTFT p50 {done['ttft_p50_ms']:.0f} ms, "
            f"p90 {done['ttft_p90_ms']:.0f} ms, {done['ok']}/{done['sent']} ok")  # fmt: skip
    capacity_end = asyncio.run(calibrate(stack.base, args.replicas, mean_prompt, rng, words))
    log(f"prefill capacity at the end {capacity_end:.0f} tokens/s")
    capacity = calibrations[0]["capacity_tok_s"]
    return {"session_rate": rate, "capacity_tok_s": [capacity, capacity_end], "calibrations": calibrations,
            "vocab": words.vocab, "phases": phases}  # fmt: skip


def pooled(args: argparse.Namespace, phases: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every policy's requests from all rounds."""
    return {p: [r for ph in phases if ph["policy"] == p for r in ph["results"]] for p in args.policies}


COLUMNS = ["policy", "ok/sent", "hit rate", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms", "router fallbacks",
           "stack capacity tok/s", "prompt length mismatches"]  # fmt: skip


def report(args: argparse.Namespace, measured: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rate, (capacity, capacity_end), phases = measured["session_rate"], measured["capacity_tok_s"], measured["phases"]
    sessions = workload(args, rate, measured["vocab"])
    oracle = oracle_hit_rate(sessions)
    table = {p: summary(results) for p, results in pooled(args, phases).items()}
    fallbacks = {p: sum(ph["router_fallbacks"] for ph in phases if ph["policy"] == p) for p in args.policies}
    stack_capacity = {p: np.mean([ph["stack_capacity_tok_s"] for ph in phases if ph["policy"] == p])
                      for p in args.policies}  # fmt: skip
    rows = [[p, f"{s['ok']}/{s['sent']}", f"{s['hit_rate']:.1%}", s["ttft_p50_ms"], s["ttft_p90_ms"], s["ttft_p99_ms"],
             f"{fallbacks[p]:.0f}", f"{stack_capacity[p]:.0f}", s["token_mismatches"]]
            for p, s in table.items()]  # fmt: skip
    rows.append(["oracle (bound)", "-", f"{oracle:.1%}", "-", "-", "-", "-", "-", "-"])
    by_round = [
        ratios({ph["policy"]: summary(ph["results"]) for ph in phases if ph["round"] == r}, oracle)
        for r in range(args.rounds)
    ]
    pooled_ratios = ratios(table, oracle)
    offered = sum(prompt_tokens(sessions)) * (1 - oracle) * rate / args.sessions
    stacks = ", ".join(f"{c['stack']} {c['capacity_tok_s']:.0f}" for c in measured["calibrations"])
    md = (
        f"# Routing on real engines ({args.replicas} x {MODEL}, vLLM-CPU, {args.kv_cache_gib} GiB KV cache each, "
        f"{args.routers} router replicas)\n\n"
        f"`python -m benchmarks.routing_engines{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`: "
        f"{args.tenants} tenants, {args.sessions} sessions x {args.turns} "
        f"turns at {rate:.2f} sessions/s, contexts 1500-3000 tokens, text prompts of the workload's tokens, "
        f"1 output token; {args.rounds} rounds, the policies in a rotated order each round. glmserve's policies "
        f"share one stack; each Ray Serve router phase (`ray-*`: Ray's own request routers on the engines' "
        f"deployment, Ray's defaults, no glmserve router) runs on a fresh stack of the same engines and flags. "
        f"The oracle's uncached prompt tokens arrive at {offered:.0f} tokens/s, {offered / capacity:.2f} of the "
        f"prefill capacity measured first ({capacity:.0f} tokens/s; {capacity_end:.0f} at the end). Prefill "
        f"capacity of each stack as it started, tokens/s: {stacks}.\n\n"
        + markdown_table(COLUMNS, rows)
        + "\n"
        + markdown_table(
            ["ratio", "all rounds", *(f"round {r + 1}" for r in range(args.rounds))],
            [[k, v, *(rnd.get(k, float("nan")) for rnd in by_round)] for k, v in pooled_ratios.items()],
        )
        + "\n"
        + markdown_table(["goal (issue 16)", "target", "all rounds", "verdict"], goals(pooled_ratios))
    )
    data = {
        "args": vars(args),
        **measured,
        "oracle_hit_rate": oracle,
        "summary": table,
        "ratios": pooled_ratios,
        "ratios_by_round": by_round,
        "goals": goals(pooled_ratios),
    }
    return md, data


def main() -> None:
    args = parse_args()
    words = Words.of_model(args.seed)
    log(f"{words.vocab} word tokens")
    stack = Stack(args, Path(tempfile.mkdtemp(prefix="glmserve-bench-routing-")))
    try:
        measured = measure(args, stack, words)
    finally:
        stack.stop()
    md, data = report(args, measured)
    for path in write("routing_engines", data, md, lambda p: plot(pooled(args, measured["phases"]), p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
