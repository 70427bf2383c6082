"""Per-request plan checks, before any shared state is touched: a request that can never fit its
plan is a 400 (or 403) naming the limit, not a 429 the client would retry forever."""

from __future__ import annotations

from dataclasses import dataclass

from glmserve.admission.model import Cost
from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import InvalidRequestError, PermissionDeniedError


@dataclass(frozen=True, slots=True)
class Budget:
    cost: Cost
    # the max_tokens the engine must get: the request's own, or, when it set none, the most its plan
    # allows (None: no plan cap, the engine's default applies)
    engine_max_tokens: int | None


def budget(tenant: ResolvedTenant, model: str, prompt_tokens: int, max_tokens: int | None) -> Budget:
    """What the request will take from its tenant's limits; raises if its plan can never serve it.

    Without max_tokens, the plan's default_output_tokens are reserved and the difference to the real
    output is settled when the request ends.
    """
    plan, limits, rates = tenant.plan, tenant.limits, tenant.limits.rates
    if not tenant.allows(model):
        raise PermissionDeniedError(
            f"Your plan '{plan}' does not include the model '{model}'.", param="model", code="model_not_in_plan"
        )
    if prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be >= 0, got {prompt_tokens}")
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequestError(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
    if limits.max_output_tokens and max_tokens is not None and max_tokens > limits.max_output_tokens:
        raise InvalidRequestError(
            f"max_tokens is {max_tokens}, but plan '{plan}' allows at most {limits.max_output_tokens} output "
            "tokens per request (max_output_tokens).",
            param="max_tokens",
            code="max_output_tokens_exceeded",
        )
    room = None
    if limits.max_context_tokens:
        room = limits.max_context_tokens - prompt_tokens
        if room < 1 or (max_tokens is not None and max_tokens > room):
            wanted = f"{prompt_tokens} in the prompt" + ("" if max_tokens is None else f" + {max_tokens} max_tokens")
            raise InvalidRequestError(
                f"Plan '{plan}' allows at most {limits.max_context_tokens} context tokens per request "
                f"(max_context_tokens); this request asks for {wanted}. Please shorten the prompt or lower max_tokens.",
                param="messages" if max_tokens is None or room < 1 else "max_tokens",
                code="context_length_exceeded",
            )
    caps = [c for c in (limits.max_output_tokens or None, room) if c is not None]
    engine_max = max_tokens if max_tokens is not None else (min(caps) if caps else None)
    if max_tokens is not None:
        reserve = max_tokens
    else:
        reserve = min([limits.default_output_tokens, *caps])
        if rates.output_tokens_per_minute:  # a default the plan's own rate could never grant
            reserve = min(reserve, rates.output_tokens_per_minute)
    _fits_bucket(plan, "input_tokens_per_minute", rates.input_tokens_per_minute, prompt_tokens, "messages")
    _fits_bucket(plan, "output_tokens_per_minute", rates.output_tokens_per_minute, reserve, "max_tokens")
    return Budget(Cost(prompt_tokens, reserve), engine_max)


def _fits_bucket(plan: str, name: str, per_minute: int, tokens: int, param: str) -> None:
    if per_minute and tokens > per_minute:
        raise InvalidRequestError(
            f"Request too large: it needs {tokens} tokens, but plan '{plan}' grants {per_minute} per minute "
            f"({name}), so it could never be admitted.",
            param=param,
            code="request_too_large",
        )
