"""The ingress's memory of the router's full-queue refusals (admit.FullQueues): what it refuses at
once, and when it asks the router again."""

from __future__ import annotations

import pytest

from glmserve.common.errors import OverloadedError
from glmserve.serving.ingress import admit
from glmserve.serving.ingress.admit import QUEUE_FULL, QUEUE_FULL_HOLD_S, FullQueues

MODEL = "glm-4.6-tiny"


def _refusal() -> OverloadedError:
    return OverloadedError(
        "the queue for 'glm-4.6-tiny' is full (4 requests waiting)", code=QUEUE_FULL, retry_after_s=1.0
    )


def test_a_refused_tenant_is_refused_at_once_with_the_routers_answer_until_a_slot_frees() -> None:
    full = FullQueues()
    full.check(MODEL, "flood")  # nothing refused yet
    full.full(MODEL, "flood", _refusal())
    with pytest.raises(OverloadedError) as refused:
        full.check(MODEL, "flood")
    assert refused.value.code == QUEUE_FULL and refused.value.retry_after_s == 1.0
    assert refused.value.kind.http_status == 503
    full.check(MODEL, "light")  # another tenant may rank ahead at the router: it still asks
    full.check("other-model", "flood")
    full.freed(MODEL)  # a request for the model ended here: the queue moved
    full.check(MODEL, "flood")


def test_each_request_that_ends_here_lets_one_held_request_ask_again() -> None:
    """A completion frees one place in the router's queue: one held request asks for it, the rest
    of a flood stays refused here instead of being rendered and refused by the router."""
    full = FullQueues()
    full.full(MODEL, "flood", _refusal())
    full.freed(MODEL)
    full.freed(MODEL)
    full.check(MODEL, "flood")
    full.check(MODEL, "flood")
    with pytest.raises(OverloadedError):
        full.check(MODEL, "flood")
    full.freed(MODEL)
    full.full(MODEL, "flood", _refusal())  # the router is full again: the freed place was taken
    with pytest.raises(OverloadedError):
        full.check(MODEL, "flood")


def test_a_full_queue_is_believed_only_briefly_when_no_slot_frees_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots that free through other ingress replicas are not seen: the refusal expires."""
    now = [100.0]
    monkeypatch.setattr(admit.time, "monotonic", lambda: now[0])
    full = FullQueues()
    full.full(MODEL, "flood", _refusal())
    now[0] += QUEUE_FULL_HOLD_S * 0.9
    with pytest.raises(OverloadedError):
        full.check(MODEL, "flood")
    now[0] += QUEUE_FULL_HOLD_S * 0.2
    full.check(MODEL, "flood")
