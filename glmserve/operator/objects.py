"""A custom resource as last read from the API: what the reconcilers need of its body."""

from __future__ import annotations

from dataclasses import dataclass
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

    @classmethod
    def of(cls, body: dict[str, Any]) -> Observed:
        meta = body["metadata"]
        conditions = ((body.get("status") or {}).get("conditions")) or []
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace"),
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            spec=dict(body.get("spec") or {}),
            conditions=[Condition.model_validate(c) for c in conditions],
        )
