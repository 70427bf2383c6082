"""Per-request plan checks: 400/403 naming the limit, never a 429 that could not pass."""

from __future__ import annotations

import pytest

from glmserve.admission.model import Cost
from glmserve.admission.request import Budget, budget
from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import InvalidRequestError, PermissionDeniedError
from tests.admission.helpers import tenant


def test_model_outside_the_plan_is_403() -> None:
    with pytest.raises(PermissionDeniedError) as info:
        budget(tenant(models=("glm-4.6-air",), plan="free"), "glm-4.6", 10, 10)
    assert info.value.kind.http_status == 403
    assert info.value.param == "model"
    assert "plan 'free' does not include the model 'glm-4.6'" in info.value.message


def test_max_output_per_request() -> None:
    with pytest.raises(InvalidRequestError) as info:
        budget(tenant(max_output=256), "m", 10, 257)
    assert (info.value.kind.http_status, info.value.param, info.value.code) == (
        400,
        "max_tokens",
        "max_output_tokens_exceeded",
    )
    assert "max_output_tokens" in info.value.message
    assert "256" in info.value.message
    assert budget(tenant(max_output=256), "m", 10, 256) == Budget(Cost(10, 256), 256)


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "param"), [(8000, 200, "max_tokens"), (8192, None, "messages"), (9000, 1, "messages")]
)
def test_max_context_per_request(prompt: int, max_tokens: int | None, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        budget(tenant(max_context=8192), "m", prompt, max_tokens)
    assert (info.value.param, info.value.code) == (param, "context_length_exceeded")
    assert "max_context_tokens" in info.value.message
    assert str(prompt) in info.value.message


def test_default_reservation_and_engine_cap() -> None:
    # no max_tokens: reserve the plan default, cap the engine at what the plan allows
    assert budget(tenant(default_output=512), "m", 10, None) == Budget(Cost(10, 512), None)
    assert budget(tenant(default_output=512, max_output=4096), "m", 10, None) == Budget(Cost(10, 512), 4096)
    # the context leaves less room than the default: reserve (and cap) that
    assert budget(tenant(default_output=512, max_context=1000), "m", 700, None) == Budget(Cost(700, 300), 300)
    # a default above the plan's own output rate would never be granted
    assert budget(tenant(default_output=512, otpm=100), "m", 1, None).cost == Cost(1, 100)


@pytest.mark.parametrize(
    ("who", "prompt", "max_tokens", "limit"),
    [(tenant(itpm=1000), 1001, 1, "input_tokens_per_minute"), (tenant(otpm=100), 1, 101, "output_tokens_per_minute")],
)
def test_larger_than_a_minute_of_quota_is_400(who: ResolvedTenant, prompt: int, max_tokens: int, limit: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        budget(who, "m", prompt, max_tokens)
    assert info.value.code == "request_too_large"
    assert limit in info.value.message


def test_max_tokens_must_be_positive() -> None:
    with pytest.raises(InvalidRequestError, match="at least 1"):
        budget(tenant(), "m", 1, 0)
