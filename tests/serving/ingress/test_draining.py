"""An ingress the stack is stopping: new requests get 503 with Retry-After (so that clients retry
elsewhere or later instead of waiting for engines that are going away); a stream it already
relays runs to its end."""

from __future__ import annotations

import pytest

from glmserve.common.errors import OverloadedError
from tests.serving.ingress.conftest import Make, Pool, chat, deliver, streamed

pytestmark = pytest.mark.asyncio


async def test_a_draining_ingress_refuses_new_requests_and_finishes_its_streams(make_service: Make) -> None:
    pool = Pool()
    pool.answer(streamed(5))
    service = make_service(pool)
    running = await service.generate("chat", chat(stream=True), {})
    service.drain()
    with pytest.raises(OverloadedError) as refused:
        await service.generate("chat", chat(), {})
    assert refused.value.kind.http_status == 503 and refused.value.retry_after_s
    assert len(pool.calls) == 1  # the refused request reached no engine
    answer = await deliver(running)
    assert answer.status == 200 and answer.events[-1] == "data: [DONE]"
    assert sum('"content":"t' in event for event in answer.events) == 5  # every token
