"""A custom resource as last read from the API: what the reconcilers need of its body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glmserve.common.resource import Condition


@dataclass(frozen=True, slots=True)
class Observed:
    name: str
    namespace: str | None
    uid: str | None  # None only where the API server stamps none (kmock)
    generation: int | None
    spec: dict[str, Any]
    conditions: list[Condition]
    status: dict[str, Any] = field(default_factory=dict)  # as last written, for what is read only now and then

    @classmethod
    def of(cls, body: dict[str, Any]) -> Observed:
        meta = body["metadata"]
        status = dict(body.get("status") or {})
        conditions = status.get("conditions") or []
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace"),
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            spec=dict(body.get("spec") or {}),
            conditions=[Condition.model_validate(c) for c in conditions],
            status=status,
        )
