"""Specs read from the operator's indexes, keeping only the valid ones.

The API server validates custom resources against their CRD; an object that still fails the
pydantic model (a CRD applied without its schema, a hand-edited one) reports itself in its own
status and is ignored by the objects that refer to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def valid_specs(model: type[M], raw: Mapping[str, Any]) -> dict[str, M]:
    specs: dict[str, M] = {}
    for name, spec in raw.items():
        try:
            specs[name] = model.model_validate(spec)
        except ValidationError:
            continue
    return specs
