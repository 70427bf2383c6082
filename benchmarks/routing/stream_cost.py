"""`python -m benchmarks.routing.stream_cost [--seconds S]`: what grpc.aio's per-call machinery
costs a server, for two unary calls per request (Route, then Complete) against the same two
messages on one long-lived bidirectional stream.

The server is a grpc.aio process with handlers that do no work (bytes in, a fixed reply out, no
protobuf), so its CPU is gRPC's and the event loop's alone. The stream's server is built like the
router's Session: a reader that starts a task per "route" message (a real Route awaits admission and
flow control), answers "complete" messages inline, and one writer draining a queue of replies. The
load runs on gRPC's sync client threads in this process (load.py's reasons), with the router
benchmark's message sizes: an 8192-token RouteRequest (~24 KB), small replies.

Reported per mode: closed-loop pairs per second (16 callers) and the server's CPU per pair, closed
loop and paced at a fixed rate (where calls arrive one by one and share fewer wake-ups).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks import results_io
from benchmarks.routing.load import StreamCalls, run_threads
from benchmarks.routing.router_process import cpu_seconds

UNARY = "/bench.Echo/Call"
SESSION = "/bench.Echo/Session"
ROUTE, COMPLETE = b"r", b"c"
ROUTE_BYTES = 24 * 1024  # an 8192-token prompt's varints, about
REPLY = b"x" * 120  # about a RouteResponse
_HEADER = struct.Struct("<cQ")  # kind, request id
_OPTIONS = [("grpc.max_send_message_length", 2**26), ("grpc.max_receive_message_length", 2**26)]


async def _serve() -> None:
    async def call(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return REPLY

    async def session(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def route(header: bytes) -> None:
            replies.put_nowait(header + REPLY)

        async def read() -> None:
            while (message := await context.read()) is not grpc.aio.EOF:
                header = bytes(message[: _HEADER.size])
                if header[:1] == ROUTE:
                    task = asyncio.create_task(route(header))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    replies.put_nowait(header + REPLY)
            replies.put_nowait(None)

        reader = asyncio.create_task(read())
        while (reply := await replies.get()) is not None:
            await context.write(reply)
        await reader

    handlers = {
        "Call": grpc.unary_unary_rpc_method_handler(call),
        "Session": grpc.stream_stream_rpc_method_handler(session),
    }
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


class _Stream:
    """The benchmark's messages on one Session-like stream: a header (kind, id) before the payload."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.calls = StreamCalls(channel, SESSION, lambda reply: int(_HEADER.unpack_from(reply)[1]))
        self._ids = itertools.count(1)

    def send(self, kind: bytes, payload: bytes, done: Callable[[bytes], None]) -> None:
        call_id = next(self._ids)
        self.calls.send(call_id, _HEADER.pack(kind, call_id) + payload, done)

    def call(self, kind: bytes, payload: bytes) -> None:
        call_id = next(self._ids)
        self.calls.call(call_id, _HEADER.pack(kind, call_id) + payload)


def _closed_loop(mode: str, port: int, callers: int, seconds: float) -> tuple[int, float]:
    """Pairs done by `callers` threads calling back to back, and the seconds they took."""
    route_payload, done = b"\1" * ROUTE_BYTES, [0] * callers
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
        stream = _Stream(channel) if mode == "stream" else None
        unary = channel.unary_unary(UNARY)
        deadline = time.perf_counter() + seconds

        def caller(k: int) -> None:
            while time.perf_counter() < deadline:
                if stream is not None:
                    stream.call(ROUTE, route_payload)
                    stream.call(COMPLETE, b"")
                else:
                    unary(route_payload, timeout=30)
                    unary(b"", timeout=30)
                done[k] += 1

        elapsed = run_threads(caller, callers)
        if stream is not None:
            stream.calls.close()
    return sum(done), elapsed


def _paced(mode: str, port: int, rate: float, seconds: float) -> int:
    """Sends a route every 1 / rate seconds and its complete when the route is answered; returns the
    pairs sent once every one is answered."""
    route_payload, count = b"\1" * ROUTE_BYTES, int(rate * seconds)
    finished = threading.Semaphore(0)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
        stream = _Stream(channel) if mode == "stream" else None
        unary = channel.unary_unary(UNARY)

        def routed(_: object) -> None:
            if stream is not None:
                stream.send(COMPLETE, b"", lambda _: finished.release())
            else:
                unary.future(b"", timeout=30).add_done_callback(lambda _: finished.release())

        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if stream is not None:
                stream.send(ROUTE, route_payload, routed)
            else:
                unary.future(route_payload, timeout=30).add_done_callback(routed)
        for _ in range(count):
            finished.acquire()
        if stream is not None:
            stream.calls.close()
    return count


def _server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    command = [sys.executable, "-m", "benchmarks.routing.stream_cost", "--serve"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=results_io.RESULTS.parents[1])
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(mode: str, *, seconds: float, rate: float, callers: int = 16) -> dict[str, float]:
    """One fresh server per mode, so neither inherits the other's warm-up or garbage."""
    for proc, port in _server():
        _closed_loop(mode, port, callers, 1.0)  # connection, threads and the loop warmed up
        cpu = cpu_seconds(proc.pid)
        pairs, elapsed = _closed_loop(mode, port, callers, seconds)
        closed_cpu = (cpu_seconds(proc.pid) - cpu) / pairs
        cpu = cpu_seconds(proc.pid)
        pairs_paced = _paced(mode, port, rate, seconds)
        paced_cpu = (cpu_seconds(proc.pid) - cpu) / pairs_paced
    return {
        "closed_loop_pairs_per_s": pairs / elapsed,
        "server_cpu_ms_per_pair_closed_loop": closed_cpu * 1e3,
        "server_cpu_ms_per_pair_paced": paced_cpu * 1e3,
    }


def markdown(results: dict[str, Any]) -> str:
    modes = results["modes"]
    rows = [
        [name, f"{m['closed_loop_pairs_per_s']:,.0f}", m["server_cpu_ms_per_pair_closed_loop"],
         m["server_cpu_ms_per_pair_paced"]]
        for name, m in modes.items()
    ]  # fmt: skip
    saved = modes["unary"]["server_cpu_ms_per_pair_paced"] - modes["stream"]["server_cpu_ms_per_pair_paced"]
    return (
        "# gRPC per-call cost: two unary calls vs one stream\n\n"
        f"`{results['command']}`: a grpc.aio server whose handlers do no work; Route (~24 KB) and "
        f"Complete per pair; 16 closed-loop callers, then paced at {results['rate_per_s']:.0f} pairs/s "
        f"for {results['seconds']:.0f} s each.\n\n"
        + results_io.markdown_table(
            ["mode", "closed loop pairs/s", "server CPU ms/pair (closed loop)", "server CPU ms/pair (paced)"], rows
        )
        + f"\nThe stream saves {saved:.2f} ms of the server's CPU per pair when paced.\n"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    modes = results["modes"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(modes)
    width = 0.35
    for k, key in enumerate(("server_cpu_ms_per_pair_closed_loop", "server_cpu_ms_per_pair_paced")):
        xs = [i + (k - 0.5) * width for i in range(len(names))]
        ax.bar(xs, [modes[n][key] for n in names], width, label=key.removeprefix("server_cpu_ms_per_pair_"))
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("server CPU per Route + Complete (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.stream_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="each measurement's duration (default 4)")
    parser.add_argument("--rate", type=float, default=500.0, help="paced pairs per second (default 500)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.routing.stream_cost", *(argv or sys.argv[1:])]),
        "seconds": args.seconds,
        "rate_per_s": args.rate,
        "modes": {mode: measure(mode, seconds=args.seconds, rate=args.rate) for mode in ("unary", "stream")},
    }
    for path in results_io.write("routing_stream_cost", results, markdown(results), lambda p: plot(results, p)):
        print(f"wrote {path}", file=sys.stderr)
    print(markdown(results))


if __name__ == "__main__":
    main()
