"""Request migration (migration.py) through the real ingress service, with scripted engines: a
request whose engine dies, fails or stalls continues on another replica from the token ids already
delivered, the client sees one stream with one usage total, and the request ends (is billed) once."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

from glmserve.serving.ingress.service import IngressService
from glmserve.serving.ingress.settings import MigrationSettings
from tests.serving.ingress.conftest import (
    MODEL,
    EngineStream,
    Make,
    Pool,
    chat,
    completed,
    deliver,
    engine_error,
    sample,
)

pytestmark = pytest.mark.asyncio

MIGRATIONS = "glmserve_ingress_migrations_total"
TOOL_CALL = 4086  # `<tool_call>` in glm-4.6-tiny's tokenizer


def _event(chunk: dict[str, Any]) -> str:
    return "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n"  # as vLLM writes them


def _chunk(prompt: int, done: int, delta: dict[str, Any], ids: list[int] | None, finish: str | None = None) -> str:
    """One chat chunk as the engine sends it when asked for token ids (None: it hides them) and
    the running usage."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    usage = {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}
    return _event({"id": f"chatcmpl-{prompt}", "object": "chat.completion.chunk", "created": prompt, "model": MODEL,
                   "choices": [choice], "usage": usage})  # fmt: skip


def leg(
    prompt: list[int],
    ids: list[int],
    *,
    finish: bool = True,
    error: Exception | None = None,
    hang: bool = False,
    hide_ids: bool = False,
) -> EngineStream:
    """What one engine streams for `prompt`: its role chunk (with the prompt's ids), a chunk per
    token (`ids`, text `<id>`), then, when it finishes, the finish, the usage event and [DONE]."""
    role = _chunk(len(prompt), 0, {"role": "assistant", "content": ""}, [])
    role = role.replace(',"usage"', f',"prompt_token_ids":{json.dumps(prompt, separators=(",", ":"))},"usage"')
    batches = [[role]]
    for n, token in enumerate(ids, 1):
        last = finish and n == len(ids)
        shown = None if hide_ids else [token]
        batches.append([_chunk(len(prompt), n, {"content": f"<{token}>"}, shown, "length" if last else None)])
    if finish:
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(ids), "total_tokens": len(prompt) + len(ids)}
        batches.append([_event({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                                "choices": [], "usage": usage}), "data: [DONE]\n\n"])  # fmt: skip
    return EngineStream(batches, error=error, hang=hang)


def _prompt(pool: Pool, call: int = 0) -> list[int]:
    return list(pool.bodies[call].kv_transfer_params["prompt_token_ids"])


def _chunks(answer_events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e.removeprefix("data: ")) for e in answer_events if e != "data: [DONE]"]


def _content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def _ended_once(service: IngressService, status: int) -> None:
    await service.background.drain()
    assert sample(service.registry, "glmserve_ingress_requests_total") == 1
    assert sample(service.registry, "glmserve_ingress_requests_total", status=str(status)) == 1
    assert sample(service.registry, "glmserve_ingress_requests_in_flight") == 0


async def _first_prompt(make_service: Make) -> list[int]:
    """The prompt the ingress renders for `chat()` (each test's engine echoes it back)."""
    probe = Pool()
    probe.answer(completed())
    service = make_service(probe)
    await deliver(await service.generate("chat", chat(), {}))
    return _prompt(probe)


async def test_a_stream_whose_replica_dies_continues_elsewhere_from_its_token_ids(make_service: Make, router) -> None:
    client, worker = router()
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(
        leg(prompt, [11, 12, 13], finish=False, error=RuntimeError("replica died")),
        leg([*prompt, 11, 12, 13], [14, 15]),
    )
    service = make_service(pool, router=client)
    body = chat(stream=True, max_tokens=5, stream_options={"include_usage": True})
    answer = await deliver(await service.generate("chat", body, {}))

    assert answer.status == 200
    chunks = _chunks(answer.events)
    assert _content(chunks) == "<11><12><13><14><15>"
    assert sum("role" in (c["choices"] or [{}])[0].get("delta", {}) for c in chunks) == 1  # one role chunk
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}  # one stream, one id
    assert all("token_ids" not in json.dumps(c) for c in chunks)  # the client did not ask for them
    assert chunks[-1]["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": 5,
        "total_tokens": len(prompt) + 5,
    }
    assert answer.events[-1] == "data: [DONE]"
    # The next replica got the prompt plus the tokens delivered, as ids, and the budget left.
    first, moved = pool.bodies
    assert first.return_token_ids and first.glmserve_target == worker
    assert _prompt(pool, 1) == [*prompt, 11, 12, 13]
    assert moved.max_tokens == 2 and moved.glmserve_avoid == (worker,) and moved.glmserve_target is None
    assert pool.streams[0].cancelled
    assert sample(service.registry, MIGRATIONS, outcome="moved") == 1
    # Admitted once, completed once, billed for the 5 tokens the client got.
    await _ended_once(service, 200)
    [finished] = client.finished
    assert finished.outcome == "ok" and finished.usage is not None
    assert (finished.usage.prompt_tokens, finished.usage.completion_tokens) == (len(prompt), 5)


async def test_an_engine_that_reports_its_own_death_mid_stream_is_left(make_service: Make) -> None:
    """vLLM's EngineDeadError arrives as a 500 error event within the stream, not as a failed call."""
    prompt = await _first_prompt(make_service)
    dead = leg(prompt, [11], finish=False)
    dead._items.append(['data: {"error": {"message": "EngineCore encountered an issue.", "code": 500}}\n\n'])
    pool = Pool()
    pool.answer(dead, leg([*prompt, 11], [12, 13]))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=3), {}))
    assert _content(_chunks(answer.events)) == "<11><12><13>"
    assert "EngineCore" not in answer.body.decode()
    await _ended_once(service, 200)


async def test_tokens_in_the_batch_that_carries_the_engines_death_reach_the_client(make_service: Make) -> None:
    """A batch holding a token and then the engine's error event: the token's event is the
    client's (the next leg's prompt holds that token, so the next leg never sends it again)."""
    prompt = await _first_prompt(make_service)
    dead = leg(prompt, [11, 12], finish=False)
    dead._items[-1].append('data: {"error": {"message": "EngineCore encountered an issue.", "code": 500}}\n\n')
    pool = Pool()
    pool.answer(dead, leg([*prompt, 11, 12], [13]))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=3), {}))
    assert _content(_chunks(answer.events)) == "<11><12><13>"
    assert _prompt(pool, 1) == [*prompt, 11, 12]
    await _ended_once(service, 200)


async def test_a_stalled_engine_is_left_after_the_stall_limit(make_service: Make) -> None:
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(leg(prompt, [11, 12], finish=False, hang=True), leg([*prompt, 11, 12], [13]))
    service = make_service(pool, migration=MigrationSettings(limit=1, stall_timeout_s=0.2))
    answer = await asyncio.wait_for(
        deliver(await service.generate("chat", chat(stream=True, max_tokens=3), {})), timeout=10
    )
    assert _content(_chunks(answer.events)) == "<11><12><13>"
    assert pool.streams[0].cancelled  # a frozen engine that wakes up does not finish it too
    await _ended_once(service, 200)


async def test_with_no_replica_left_the_stream_ends_with_an_error_event(make_service: Make, router) -> None:
    client, _ = router()
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(
        leg(prompt, [11], finish=False, error=RuntimeError("replica died")),
        leg([*prompt, 11], [12], finish=False, hang=True),
    )
    service = make_service(pool, router=client, migration=MigrationSettings(limit=1, stall_timeout_s=0.2))
    answer = await asyncio.wait_for(
        deliver(await service.generate("chat", chat(stream=True, max_tokens=9), {})), timeout=10
    )
    error = json.loads(answer.events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "failed 2 times" in error["message"]
    assert answer.events[-1] == "data: [DONE]"
    assert _content(_chunks(answer.events[:-2])) == "<11><12>"
    assert len(pool.calls) == 2
    assert sample(service.registry, MIGRATIONS, outcome="moved") == 1
    assert sample(service.registry, MIGRATIONS, outcome="refused") == 1
    await _ended_once(service, 500)
    [finished] = client.finished
    assert finished.outcome == "failed" and finished.usage is not None
    assert finished.usage.completion_tokens == 2  # what it delivered, across both engines


async def test_a_move_with_no_other_running_replica_gives_up_at_once(make_service: Make, router) -> None:
    """The only running replica is the one that failed (a host lost with the pool's only replica):
    Serve's handle would hold the move until a new replica has loaded, so the stream ends now."""
    client, worker = router()
    prompt = await _first_prompt(make_service)
    pool = Pool(replicas=frozenset({worker}))
    pool.answer(leg(prompt, [11], finish=False, error=RuntimeError("replica died")))
    service = make_service(pool, router=client)
    answer = await asyncio.wait_for(
        deliver(await service.generate("chat", chat(stream=True, max_tokens=9), {})), timeout=2
    )
    error = json.loads(answer.events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "no other replica of its pool is running" in error["message"]
    assert answer.events[-1] == "data: [DONE]" and _content(_chunks(answer.events[:-2])) == "<11>"
    assert len(pool.calls) == 1
    assert sample(service.registry, MIGRATIONS, outcome="refused") == 1
    await _ended_once(service, 500)
    [finished] = client.finished
    assert finished.usage is not None and finished.usage.completion_tokens == 1


@pytest.mark.parametrize(
    ("running", "moves"),
    [
        (frozenset(), False),  # the replacement is not running yet
        (frozenset({"a"}), False),  # Serve chose the failed replica without saying which: maybe "a"
        (frozenset({"a", "b"}), True),
    ],
)
async def test_without_the_routers_pick_a_move_needs_a_running_replica_besides_the_failed_one(
    make_service: Make, running: frozenset[str], moves: bool
) -> None:
    prompt = await _first_prompt(make_service)
    pool = Pool(replicas=running)
    pool.answer(leg(prompt, [11], finish=False, error=RuntimeError("replica died")), leg([*prompt, 11], [12]))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=2), {}))
    assert len(pool.calls) == (2 if moves else 1)
    assert (answer.events[-2].startswith('data: {"error"')) is not moves
    assert _content(_chunks(answer.events)) == ("<11><12>" if moves else "<11>")


async def test_a_whole_answer_with_no_other_running_replica_is_a_500_at_once(make_service: Make) -> None:
    pool = Pool(replicas=frozenset())
    pool.answer(engine_error(500))
    service = make_service(pool)
    with pytest.raises(Exception, match="no other replica"):
        await service.generate("chat", chat(max_tokens=4), {})
    assert len(pool.calls) == 1
    await _ended_once(service, 500)


async def test_a_tool_call_cut_mid_way_ends_the_stream_with_an_error(make_service: Make) -> None:
    """A new engine's parser would number the calls afresh and its grammar restart mid-call."""
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(leg(prompt, [11, TOOL_CALL, 12], finish=False, error=RuntimeError("replica died")))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=9), {}))
    error = json.loads(answer.events[-2].removeprefix("data: "))["error"]
    assert "tool call was cut mid-way" in error["message"]
    assert len(pool.calls) == 1  # not moved
    await _ended_once(service, 500)


async def test_output_under_a_grammar_is_not_moved_once_started(make_service: Make) -> None:
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(leg(prompt, [11], finish=False, error=RuntimeError("replica died")))
    service = make_service(pool)
    body = chat(stream=True, max_tokens=9, response_format={"type": "json_object"})
    answer = await deliver(await service.generate("chat", body, {}))
    assert "grammar cannot resume" in answer.events[-2]
    assert len(pool.calls) == 1


async def test_a_client_that_asked_for_token_ids_gets_them_across_a_move(make_service: Make) -> None:
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(leg(prompt, [11], finish=False, error=RuntimeError("died")), leg([*prompt, 11], [12]))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=2, return_token_ids=True), {}))
    chunks = _chunks(answer.events)
    assert chunks[0]["prompt_token_ids"] == prompt  # the client's prompt, never the continued one
    assert [i for c in chunks for ch in c["choices"] for i in ch.get("token_ids") or []] == [11, 12]


async def test_a_request_that_fails_before_its_first_token_starts_over(make_service: Make) -> None:
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(EngineStream([], error=RuntimeError("replica died")), leg(prompt, [11, 12]))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=2), {}))
    chunks = _chunks(answer.events)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"  # its first leg sent nothing
    assert _content(chunks) == "<11><12>"
    assert _prompt(pool, 1) == prompt


@pytest.mark.parametrize("failure", ["died", "engine_dead"])
async def test_a_whole_answer_whose_engine_fails_is_asked_of_another_replica(make_service: Make, failure: str) -> None:
    pool = Pool()
    first = EngineStream([], error=RuntimeError("replica died")) if failure == "died" else engine_error(500)
    pool.answer(first, completed("from the other replica", completion_tokens=4))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(max_tokens=4), {}))
    assert answer.status == 200
    assert ChatCompletionResponse.model_validate(answer.json()).choices[0].message.content == "from the other replica"
    assert _prompt(pool, 0) == _prompt(pool, 1) and not pool.bodies[1].return_token_ids
    await _ended_once(service, 200)


async def test_an_overloaded_engine_is_not_a_failed_one(make_service: Make) -> None:
    """503 is every replica's answer under load: it goes back to the client with Retry-After."""
    pool = Pool()
    pool.answer(engine_error(503))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True), {}))
    assert answer.status == 503 and len(pool.calls) == 1


async def test_a_whole_answer_with_no_replica_left_is_a_500(make_service: Make) -> None:
    pool = Pool()
    pool.answer(engine_error(500), engine_error(500))
    service = make_service(pool, migration=MigrationSettings(limit=1))
    with pytest.raises(Exception, match="failed 2 times"):
        await service.generate("chat", chat(max_tokens=4), {})
    await _ended_once(service, 500)


async def test_a_stream_whose_token_ids_are_hidden_is_not_started_over(make_service: Make) -> None:
    """With `include_reasoning: false` vLLM sends no token ids: what was delivered is unknown, and
    starting over would send it twice."""
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(leg(prompt, [11, 12], finish=False, error=RuntimeError("replica died"), hide_ids=True))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, include_reasoning=False), {}))
    assert "include_reasoning" in answer.events[-2] and len(pool.calls) == 1


async def test_a_decode_replica_dying_mid_stream_continues_on_another_that_prefills_itself(make_service: Make) -> None:
    """P/D: the KV the prefill replica made was pulled by the dead decode replica; the next one
    computes the continued prompt itself (no second remote prefill)."""
    prompt = await _first_prompt(make_service)
    prefill, decode = Pool(), Pool()
    prefill.answer(
        EngineStream([SimpleNamespace(kv_transfer_params={"remote_engine_id": "p-1", "remote_block_ids": [1]})])
    )
    decode.answer(leg(prompt, [11, 12], finish=False, error=RuntimeError("died")), leg([*prompt, 11, 12], [13]))
    service = make_service(decode, prefill)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=3), {}))
    assert _content(_chunks(answer.events)) == "<11><12><13>"
    assert decode.bodies[0].kv_transfer_params["remote_engine_id"] == "p-1"
    assert decode.bodies[1].kv_transfer_params == {"prompt_token_ids": [*prompt, 11, 12]}
    assert len(prefill.calls) == 1
    await _ended_once(service, 200)


async def test_a_move_the_next_replica_refuses_ends_the_stream_with_its_reason(make_service: Make) -> None:
    prompt = await _first_prompt(make_service)
    pool = Pool()
    pool.answer(leg(prompt, [11], finish=False, error=RuntimeError("died")), engine_error(503, "queue full"))
    service = make_service(pool)
    answer = await deliver(await service.generate("chat", chat(stream=True, max_tokens=3), {}))
    assert "no replica took it over: queue full" in answer.events[-2] and answer.events[-1] == "data: [DONE]"
    await _ended_once(service, 500)
