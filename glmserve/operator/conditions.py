"""Conditions: set one, and turn transitions into Kubernetes Events (once, not on every resync)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import ValidationError

from glmserve.common.errors import validation_problems
from glmserve.common.resource import Condition


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition], type_: str, *, status: bool, reason: str, message: str, generation: int | None
) -> list[Condition]:
    """`conditions` with `type_` replaced; its transition time only moves when its status changes."""
    value: Literal["True", "False"] = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now()
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]


@dataclass(frozen=True, slots=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def transitions(old: list[Condition], new: list[Condition]) -> list[Event]:
    """An Event per condition whose status, reason or message changed."""
    before = {c.type: (c.status, c.reason, c.message) for c in old}
    return [
        Event("Normal" if c.status == "True" else "Warning", c.reason, f"{c.type}: {c.message}")
        for c in new
        if before.get(c.type) != (c.status, c.reason, c.message)
    ]


def spec_problems(exc: ValidationError) -> str:
    """A pydantic error as a human reads it: `field.path: what to fix; ...`."""
    return validation_problems(exc, root="spec")
