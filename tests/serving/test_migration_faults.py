"""Engine faults through real processes: with two colocated engine replicas, greedy streams whose
engine is SIGKILLed or frozen (SIGSTOP) mid-way complete on the other replica with every token,
each billed once; how far each matched an uninterrupted run is reported (near-ties of the random
model may break differently)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.stack_processes import engine_cores
from tests.serving.conftest import Stack, run_stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
MAX_TOKENS = 128
STALL_S = 6  # the stack's stall limit
PROMPTS = [f"Story {i}: the {word} went" for i, word in enumerate(["fox", "river", "lamp", "city"])]
EXTRA: dict[str, Any] = {"ignore_eos": True, "return_token_ids": True, "thinking": {"type": "disabled"}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two colocated replicas (so the local router runs and pins each request), migration as it is
    by default, and a short stall limit."""
    flags = ["--replicas", "2", "--stall-timeout-s", str(STALL_S), "--max-model-len", "1024"]
    yield from run_stack(tmp_path_factory.mktemp("migration"), flags)


def _stream(stack: Stack, prompt: str, started: threading.Barrier | None = None) -> tuple[list[int], str, Any]:
    """(token ids, content, final usage) of one greedy stream; waits at `started` once 8 tokens arrived."""
    client = stack.client(timeout=180, max_retries=0)
    ids: list[int] = []
    content, usage = "", None
    chunks = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body=EXTRA,
    )  # fmt: skip
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            ids += (choice.model_extra or {}).get("token_ids") or []
            content += choice.delta.content or ""
        if started is not None and len(ids) >= 8:
            started.wait(timeout=120)
            started = None
    return ids, content, usage


def _whole(stack: Stack, prompt: str) -> list[int]:
    r = stack.client(timeout=180, max_retries=0).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0,
        extra_body=EXTRA,
    )  # fmt: skip
    return list(r.choices[0].model_extra["token_ids"])  # type: ignore[index]


def _migrations(stack: Stack) -> dict[str, float]:
    with stack.http() as http:
        text = http.get(f"{stack.root}/metrics").text
    found = re.findall(r'glmserve_ingress_migrations_total\{model="[^"]+",outcome="(\w+)"\} ([0-9.e+]+)', text)
    return {outcome: float(value) for outcome, value in found}


def _faulted(stack: Stack, fault: Any) -> list[tuple[list[int], str, Any]]:
    """Every prompt streamed at once; `fault()` runs once each stream is under way."""
    started = threading.Barrier(len(PROMPTS) + 1)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        runs = [pool.submit(_stream, stack, prompt, started) for prompt in PROMPTS]
        started.wait(timeout=180)
        fault()
        return [run.result(timeout=300) for run in runs]


def _check_against(
    runs: list[tuple[list[int], str, Any]], reference: list[tuple[list[int], str, Any]]
) -> list[int | None]:
    """Every stream delivered every token and was billed for each once; returns, per stream, the
    first token that differs from the uninterrupted run. That is reported, not asserted: this
    random model's bfloat16 logits tie or lead by one rounding step at many steps, and served
    continuations have flipped one (646 for 647, 117 tokens in, in a clean-clone run) although
    vLLM offline continues these streams exactly (test_greedy_continuation.py)."""
    assert all(len(ids) == MAX_TOKENS for ids, _, _ in runs), [len(ids) for ids, _, _ in runs]
    assert all(usage.completion_tokens == MAX_TOKENS for _, _, usage in runs)
    return [
        next((i for i, (a, b) in enumerate(zip(ids, ref, strict=True)) if a != b), None)
        for (ids, _, _), (ref, _, _) in zip(runs, reference, strict=True)
    ]


@pytest.fixture(scope="module")
def reference(pair: Stack) -> list[tuple[list[int], str, Any]]:
    """The uninterrupted greedy runs, streamed at once as in the faulted runs."""
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(lambda prompt: _stream(pair, prompt), PROMPTS))


def test_a_frozen_engine_is_left_after_the_stall_limit_and_its_streams_complete(pair: Stack, reference) -> None:
    engines = engine_cores(pair.sid)
    assert len(engines) == 2
    before = _migrations(pair).get("moved", 0)
    frozen = engines[0]
    started = time.monotonic()
    try:
        runs = _faulted(pair, lambda: os.kill(frozen, signal.SIGSTOP))
    finally:
        os.kill(frozen, signal.SIGCONT)
    elapsed = time.monotonic() - started
    diverged = _check_against(runs, reference)
    moved = _migrations(pair).get("moved", 0) - before
    assert moved >= 1  # the frozen replica served at least one of them
    assert elapsed < 4 * STALL_S + 60
    print(
        f"SIGSTOP: {moved:g} of {len(PROMPTS)} streams moved; all complete in {elapsed:.1f} s;"
        f" first differing token {diverged}"
    )


def test_streams_and_a_whole_answer_survive_their_engine_being_killed(pair: Stack, reference) -> None:
    engines = engine_cores(pair.sid)
    assert len(engines) == 2
    before = _migrations(pair)
    whole_reference = _whole(pair, PROMPTS[0])
    with ThreadPoolExecutor(1) as pool:

        def kill() -> None:
            os.kill(engines[1], signal.SIGKILL)

        whole = pool.submit(_whole, pair, PROMPTS[0])
        runs = _faulted(pair, kill)
        assert whole.result(timeout=300) == whole_reference
    diverged = _check_against(runs, reference)
    after = _migrations(pair)
    assert after.get("moved", 0) - before.get("moved", 0) >= 1
    assert after.get("refused", 0) == before.get("refused", 0)
    print(
        f"SIGKILL: {after.get('moved', 0) - before.get('moved', 0):g} moves; {len(PROMPTS)} streams complete;"
        f" first differing token {diverged}"
    )


def test_the_stack_serves_after_the_faults(pair: Stack, tmp_path: Path) -> None:
    r = pair.client(timeout=120).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert r.choices[0].finish_reason in ("length", "stop")
