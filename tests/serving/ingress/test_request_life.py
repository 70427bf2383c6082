"""A request's life through the ingress: each way it can end gives back what it held exactly once
(the engine slot, the plan admission settled with the tokens delivered, the router's booking with
one Complete) and is counted once with its status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ray.serve.exceptions import BackPressureError

from glmserve.common.errors import GlmserveError, InvalidRequestError, OverloadedError
from glmserve.common.ports import free_port
from glmserve.serving.ingress.service import IngressService
from glmserve.serving.ingress.settings import MigrationSettings
from tests.serving.ingress.conftest import (
    MODEL,
    EngineStream,
    Make,
    Pool,
    RecordingRouter,
    auth,
    chat,
    completed,
    deliver,
    engine_error,
    sample,
    streamed,
)
from tests.serving.tenants import KEYS, OUTPUT_TPM

pytestmark = pytest.mark.asyncio

REQUESTS = "glmserve_ingress_requests_total"


def _ended_once(service: IngressService, status: int, requests: int = 1) -> None:
    """`requests` requests counted, all with `status`; none left in flight, waiting or holding a slot."""
    registry = service.registry
    assert sample(registry, REQUESTS) == requests
    assert sample(registry, REQUESTS, status=str(status)) == requests
    assert sample(registry, "glmserve_ingress_requests_in_flight") == 0
    assert sample(registry, "glmserve_ingress_requests_waiting") == 0
    assert all(slots.running == 0 for slots in service.gate._slots.values())


async def _settled(service: IngressService) -> None:
    await service.background.drain()
    await asyncio.sleep(0.05)  # the limiter settles in a task of its own


async def test_a_completed_request_ends_once_with_its_usage(make_service: Make, tenants_file) -> None:
    pool = Pool()
    pool.answer(completed("hi there", completion_tokens=2))
    service = make_service(pool, tenants=tenants_file, capacity=4, max_waiting=4)
    answer = await deliver(await service.generate("chat", chat(max_tokens=10), auth(KEYS["tokens"])))
    assert answer.status == 200
    assert answer.json()["choices"][0]["message"]["content"] == "hi there"
    assert int(answer.headers["x-ratelimit-limit-tokens"]) == OUTPUT_TPM
    await _settled(service)
    _ended_once(service, 200)
    # 10 output tokens were reserved, 2 used: the other 8 came back.
    pool.answer(completed(completion_tokens=1))
    probe = await deliver(await service.generate("chat", chat(max_tokens=1), auth(KEYS["tokens"])))
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) == OUTPUT_TPM - 2 - 1


async def test_no_router_answering_falls_back_to_serve_balancing(make_service: Make) -> None:
    pool = Pool()
    pool.answer(completed())
    unreachable = RecordingRouter(f"127.0.0.1:{free_port()}")
    service = make_service(pool, router=unreachable)
    answer = await deliver(await service.generate("chat", chat(), {}))
    assert answer.status == 200
    assert pool.bodies[0].glmserve_target is None  # Serve picks the replica
    assert sample(service.registry, "glmserve_ingress_router_fallbacks_total", reason="unavailable") == 1
    await _settled(service)
    assert unreachable.completes == []  # no router booked it, so none is told it ended
    _ended_once(service, 200)


async def test_a_routed_stream_is_pinned_and_completed_once(make_service: Make, router) -> None:
    client, worker = router()
    pool = Pool()
    pool.answer(streamed(3))
    service = make_service(pool, router=client)
    answer = await deliver(await service.generate("chat", chat(stream=True), {}))
    assert answer.status == 200 and answer.events[-1] == "data: [DONE]"
    assert pool.bodies[0].glmserve_target == worker
    await _settled(service)
    stages = [(c.stage, c.outcome, c.known) for c in client.completes]
    assert stages == [("prefill_done", "ok", True), ("finished", "ok", True)]
    usage = client.completes[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 3)
    _ended_once(service, 200)


async def test_a_request_the_routers_flow_control_let_through_waits_for_no_ingress_slot(
    make_service: Make, router
) -> None:
    client, _ = router()  # routes and queues, but does not admit: no tenants file
    pool = Pool()
    pool.answer(streamed(1, finish=False, hang=True), completed())
    # One engine slot at the ingress, held by a hanging stream: a second wait would never end.
    service = make_service(pool, router=client, capacity=1, max_waiting=4)
    holder = await service.generate("chat", chat(stream=True), {})
    answer = await asyncio.wait_for(deliver(await service.generate("chat", chat(), {})), timeout=5)
    assert answer.status == 200
    assert sample(service.registry, "glmserve_ingress_requests_waiting") == 0
    await deliver(holder, disconnect_after=1)
    await _settled(service)
    assert [c.outcome for c in client.finished] == ["ok", "cancelled"]


async def test_a_router_that_admits_takes_the_place_of_the_ingress_admission(
    make_service: Make, tenants_file: Path, router
) -> None:
    client, _ = router(admits=tenants_file)
    pool = Pool()
    pool.answer(*(completed(completion_tokens=2) for _ in range(5)))
    # One engine slot at the ingress: were it still admitting, the second request would wait for it.
    service = make_service(pool, tenants=tenants_file, router=client, capacity=1, max_waiting=4)
    answers = [await deliver(await service.generate("chat", chat(), auth(KEYS["rpm"]))) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[-1].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(answers[-1].headers["retry-after"]) >= 1
    await _settled(service)
    assert sample(service.registry, "glmserve_admission_decisions_total") == 0
    assert service.gate._slots == {}
    assert [(c.outcome, c.known) for c in client.finished] == [("ok", True)] * 3  # the refused one holds nothing

    # The router settles what was delivered: 10 tokens reserved, 2 used.
    key = KEYS["tokens"]
    first = await deliver(await service.generate("chat", chat(max_tokens=10), auth(key)))
    assert first.status == 200
    await _settled(service)
    probe = await deliver(await service.generate("chat", chat(max_tokens=1), auth(key)))
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) == OUTPUT_TPM - 2 - 1


async def test_the_engine_gets_the_plans_output_cap_from_a_router_that_admits(
    make_service: Make, tenants_file: Path, router
) -> None:
    client, _ = router(admits=tenants_file)
    pool = Pool()
    pool.answer(completed())
    service = make_service(pool, tenants=tenants_file, router=client)
    answer = await deliver(await service.generate("chat", chat(), auth(KEYS["small"])))
    assert answer.status == 200
    assert pool.bodies[0].max_tokens == 16  # plan "small": maxOutputTokens 16


async def test_the_engine_gets_its_own_body_and_the_clients_is_never_changed(make_service: Make) -> None:
    pool = Pool()
    pool.answer(streamed(1))
    service = make_service(pool)
    body = chat(stream=True, kv_transfer_params={"remote_block_ids": [7]}, glmserve_target="someone-else")
    body.model = None
    before = body.model_dump()
    answer = await deliver(await service.generate("chat", body, {}))
    assert answer.status == 200
    assert body.model_dump() == before
    assert body.kv_transfer_params is None  # not a client field: a client's value is an ignored extra
    sent = pool.bodies[0]
    assert sent is not body
    assert sent.model == MODEL
    assert sent.glmserve_target is None
    assert set(sent.kv_transfer_params) == {"prompt_token_ids"}
    assert sent.stream_options.include_usage  # the platform counts tokens even when the client did not ask
    assert not any('"usage"' in e for e in answer.events)  # ... and the client does not see them
    assert sent.cache_salt and sent.priority == 2  # the open tenant: standard


async def test_a_prompt_that_cannot_render_is_a_400_and_reaches_no_engine(make_service: Make) -> None:
    pool = Pool()
    service = make_service(pool)
    image = [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]
    with pytest.raises(InvalidRequestError):
        await service.generate("chat", chat(messages=[{"role": "user", "content": image}]), {})
    assert pool.calls == []
    _ended_once(service, 400)


async def test_a_rate_limited_request_is_a_429_with_headers_and_holds_nothing(make_service: Make, tenants_file) -> None:
    pool = Pool()
    pool.answer(completed(), completed(), completed())
    service = make_service(pool, tenants=tenants_file, capacity=4, max_waiting=4)
    answers = [await deliver(await service.generate("chat", chat(), auth(KEYS["rpm"]))) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0" and int(refused.headers["retry-after"]) >= 1
    assert len(pool.calls) == 3
    await _settled(service)
    assert sample(service.registry, REQUESTS, status="429") == 1
    assert all(slots.running == 0 for slots in service.gate._slots.values())


async def test_a_request_shed_from_a_full_waiting_line_is_a_503(make_service: Make) -> None:
    """The ingress's own slots: no router (or none answering) to queue it."""
    pool = Pool()
    pool.answer(streamed(1, finish=False, hang=True))
    service = make_service(pool, capacity=1, max_waiting=0)
    running = await service.generate("chat", chat(stream=True), {})
    with pytest.raises(OverloadedError) as shed:
        await service.generate("chat", chat(), {})
    assert shed.value.retry_after_s
    first = await deliver(running, disconnect_after=1)
    assert first.status == 200
    await _settled(service)
    assert sample(service.registry, REQUESTS, status="503") == 1
    assert sample(service.registry, REQUESTS, status="499") == 1
    assert len(pool.calls) == 1  # the shed one never reached an engine


async def test_a_request_cancelled_while_it_waits_gives_its_admission_back(make_service: Make, tenants_file) -> None:
    pool = Pool()
    pool.answer(streamed(1, finish=False, hang=True), completed())
    service = make_service(pool, tenants=tenants_file, capacity=1, max_waiting=4)
    key = KEYS["tokens"]
    holder = await service.generate("chat", chat(stream=True, max_tokens=5), auth(key))
    waiter = asyncio.create_task(service.generate("chat", chat(max_tokens=50), auth(key)))
    await asyncio.sleep(0.05)
    assert sample(service.registry, "glmserve_ingress_requests_waiting") == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await deliver(holder, disconnect_after=1)
    await _settled(service)
    _ended_once(service, 499, requests=2)
    assert len(pool.calls) == 1  # the cancelled one never reached an engine
    pool.answer(completed(completion_tokens=1))
    probe = await deliver(await service.generate("chat", chat(max_tokens=1), auth(key)))
    # The waiter's 50 reserved tokens came back; the holder delivered only its role chunk.
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) == OUTPUT_TPM - 1


async def test_a_client_gone_while_the_engine_works_stops_the_engine(make_service: Make, router) -> None:
    client, _ = router()
    pool = Pool()
    pool.answer(EngineStream([], hang=True))
    service = make_service(pool, router=client, capacity=1, max_waiting=1)
    call = asyncio.create_task(service.generate("chat", chat(), {}))
    await asyncio.wait_for(pool.called.wait(), timeout=10)
    call.cancel()  # what Serve does to the handler when its client disconnects
    with pytest.raises(asyncio.CancelledError):
        await call
    assert pool.streams[0].cancelled
    await _settled(service)
    assert [(c.stage, c.outcome, c.known) for c in client.completes] == [("finished", "cancelled", True)]
    _ended_once(service, 499)


async def test_a_prompt_the_prefill_engine_rejects_is_its_error_and_decode_never_runs(
    make_service: Make, router
) -> None:
    client, _ = router(disaggregated=True)
    prefill, decode = Pool(), Pool()
    prefill.answer(engine_error(400, "prompt too long for this engine"))
    service = make_service(decode, prefill, router=client)
    answer = await deliver(await service.generate("chat", chat(), {}))
    assert answer.status == 400 and "too long" in answer.json()["error"]["message"]
    assert decode.calls == []
    assert prefill.streams[0].cancelled
    sent = prefill.bodies[0]
    assert sent.glmserve_target == "prefill-0"
    assert sent.max_tokens == 1 and not sent.stream and sent.kv_transfer_params["do_remote_decode"]
    await _settled(service)
    assert [(c.stage, c.outcome, c.known) for c in client.completes] == [("finished", "failed", True)]
    _ended_once(service, 400)


async def test_a_failed_prefill_replica_leaves_prefill_to_decode(make_service: Make) -> None:
    prefill, decode = Pool(), Pool()
    prefill.answer(EngineStream([], error=RuntimeError("prefill replica died")))
    decode.answer(completed())
    service = make_service(decode, prefill)
    answer = await deliver(await service.generate("chat", chat(), {}))
    assert answer.status == 200
    assert "remote_engine_id" not in decode.bodies[0].kv_transfer_params  # decode prefills itself
    assert sample(service.registry, "glmserve_ingress_prefill_fallbacks_total", reason="error") == 1
    _ended_once(service, 200)


@pytest.mark.parametrize(("status", "retry_after"), [(503, "1"), (400, None)])
async def test_an_error_the_engine_answers_is_relayed_with_its_status(
    make_service: Make, status: int, retry_after: str | None
) -> None:
    pool = Pool()
    pool.answer(engine_error(status))
    service = make_service(pool, capacity=2, max_waiting=2)
    answer = await deliver(await service.generate("chat", chat(), {}))
    assert answer.status == status and answer.json()["error"]["message"] == "engine says no"
    assert answer.headers.get("retry-after") == retry_after
    await _settled(service)
    _ended_once(service, status)


@pytest.mark.parametrize(
    ("error", "status"),
    [(BackPressureError(num_queued_requests=9, max_queued_requests=8), 503), (RuntimeError("boom"), 500)],
)
async def test_an_engine_call_that_fails_before_answering_is_an_error(
    make_service: Make, router, error: Exception, status: int
) -> None:
    client, _ = router()
    pool = Pool()
    pool.answer(EngineStream([], error=error))
    service = make_service(pool, router=client, migration=MigrationSettings(limit=0))
    with pytest.raises(GlmserveError) as failed:
        await service.generate("chat", chat(), {})
    assert failed.value.kind.http_status == status
    await _settled(service)
    assert [(c.stage, c.outcome) for c in client.completes] == [("finished", "failed")]
    _ended_once(service, status)


async def test_without_migration_an_engine_failing_mid_stream_ends_it_with_an_error_event(
    make_service: Make, router
) -> None:
    client, _ = router()
    pool = Pool()
    pool.answer(streamed(2, finish=False, error=RuntimeError("replica died")))
    service = make_service(pool, router=client, capacity=2, max_waiting=2, migration=MigrationSettings(limit=0))
    answer = await deliver(await service.generate("chat", chat(stream=True), {}))
    assert answer.status == 200  # the status line left with the first chunk
    assert '"type": "server_error"' in answer.events[-2] and answer.events[-1] == "data: [DONE]"
    assert pool.streams[0].cancelled
    await _settled(service)
    [finished] = client.finished
    assert finished.outcome == "failed"
    assert finished.usage is not None and finished.usage.completion_tokens == 2  # the 2 tokens sent
    _ended_once(service, 500)


@pytest.mark.parametrize("chunks_read", [0, 2])
async def test_a_client_that_hangs_up_on_a_stream_stops_the_engine_and_pays_every_token_it_generated(
    make_service: Make, tenants_file, router, chunks_read: int
) -> None:
    client, _ = router()
    pool = Pool()
    pool.answer(streamed(50, hang=True, finish=False, unsent=3))
    service = make_service(pool, tenants=tenants_file, router=client, capacity=1, max_waiting=1)
    key = KEYS["tokens"]
    answer = await deliver(
        await service.generate("chat", chat(stream=True, max_tokens=100), auth(key)), disconnect_after=chunks_read
    )
    assert answer.body.count(b"data: ") <= max(chunks_read, 1)
    await _settled(service)
    [stream] = pool.streams
    assert pool.aborted == [pool.bodies[0].request_id] and stream.cancelled  # the engine aborted it
    _ended_once(service, 499)
    [finished] = client.finished
    assert finished.outcome == "cancelled" and finished.usage is not None
    delivered = finished.usage.completion_tokens
    # Every token the engine generated, its unsent last batch too, not only those relayed.
    assert delivered == (stream.sent - 2) + 3  # items sent less the role chunk and the abort's end
    assert delivered <= chunks_read + 2 + 3
    pool.answer(completed(completion_tokens=1))
    probe = await deliver(await service.generate("chat", chat(max_tokens=1), auth(key)))
    # The 100 reserved came back but for what the stream delivered.
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) == OUTPUT_TPM - delivered - 1
