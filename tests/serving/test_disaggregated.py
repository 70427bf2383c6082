"""Disaggregated prefill/decode: same tokens as colocated and offline, KV really transferred."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from glmserve.serving.tiny.create import default_cache_dir
from tests.helpers.offline_vllm import run_offline
from tests.serving.conftest import Stack, run_stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
MAX_TOKENS = 16
# Several lengths, including prompts over two KV blocks, and a pair sharing a long prefix.
SHARED = "You are a coding agent working in a large repository. " * 12
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Summarise the design of a KV cache. " * 8}],
    [{"role": "system", "content": SHARED}, {"role": "user", "content": "Fix the failing test."}],
    [{"role": "system", "content": SHARED}, {"role": "user", "content": "Add a changelog entry."}],
]


@pytest.fixture(scope="module")
def pd_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from run_stack(tmp_path_factory.mktemp("pd"), ["--disaggregated"])


def _generate(client: OpenAI) -> tuple[list[list[int]], list[list[int]]]:
    prompts, outputs = [], []
    for messages in CHATS:
        r = client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        prompts.append(r.model_extra["prompt_token_ids"])  # type: ignore[index]
        outputs.append(r.choices[0].model_extra["token_ids"])  # type: ignore[index]
    return prompts, outputs


def test_disaggregated_equals_colocated_and_offline(pd_stack: Stack, stack: Stack, tmp_path: Path) -> None:
    prompts, disaggregated = _generate(pd_stack.client())
    colocated_prompts, colocated = _generate(stack.client())
    assert prompts == colocated_prompts
    assert disaggregated == colocated
    offline = run_offline(
        {"model": str(default_cache_dir()), "greedy": prompts, "max_tokens": MAX_TOKENS, "max_model_len": 8192},
        tmp_path,
    )
    assert disaggregated == offline["greedy"]


def _engine_counter(stack: Stack, name: str, **labels: str) -> float:
    """Sum of one vLLM counter over the engine replicas, as Ray exports it."""
    text = httpx.get(stack.metrics_url, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"ray_vllm_{name}" and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_decode_consumed_transferred_kv(pd_stack: Stack) -> None:
    """The decode engine took the prompt's KV from the prefill engine over NIXL, not by recomputing it."""
    external = {"source": "external_kv_transfer"}
    before = _engine_counter(pd_stack, "prompt_tokens_by_source_total", **external)
    moved_before = _engine_counter(pd_stack, "nixl_bytes_transferred_sum")
    text = "A prompt the decode engine has never seen before, spanning several KV blocks. " * 6
    r = pd_stack.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=4, temperature=0
    )
    assert r.usage is not None
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while time.monotonic() < deadline:
        transferred = _engine_counter(pd_stack, "prompt_tokens_by_source_total", **external) - before
        if transferred >= r.usage.prompt_tokens - 16:
            break
        time.sleep(2)
    assert transferred >= r.usage.prompt_tokens - 16, (transferred, r.usage.prompt_tokens)
    assert _engine_counter(pd_stack, "nixl_bytes_transferred_sum") > moved_before


def test_streaming_through_prefill_and_decode(pd_stack: Stack) -> None:
    client = pd_stack.client()
    full = client.chat.completions.create(model=MODEL, messages=CHATS[1], max_tokens=MAX_TOKENS, temperature=0)
    streamed = client.chat.completions.create(
        model=MODEL, messages=CHATS[1], max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full.choices[0].message.content


def test_prefill_replica_failure_never_hangs(pd_stack: Stack) -> None:
    """Killing the prefill engine mid-traffic: requests still complete (decode prefills locally)."""
    client = pd_stack.client(timeout=120)
    engine = _prefill_engine_pid()
    os.kill(engine, signal.SIGKILL)
    started = time.monotonic()
    r = client.chat.completions.create(model=MODEL, messages=CHATS[0], max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None
    assert time.monotonic() - started < 60


def _prefill_engine_pid() -> int:
    """The VLLM::EngineCore process whose parent is the prefill replica actor."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in ps.splitlines()]
    prefill_actors = {pid for pid, _, args in rows if "ServeReplica:glmserve:Prefill" in args}
    engines = [int(pid) for pid, ppid, args in rows if "EngineCore" in args and ppid in prefill_actors]
    assert len(engines) == 1, rows
    return engines[0]
