"""Pieces shared by the custom resources' pydantic models (specs and statuses).

A rule that Kubernetes should enforce at admission is written twice on purpose: as CEL in the
model's JSON schema (`x-kubernetes-validations`, so `kubectl apply` rejects it) and as a pydantic
validator with the same message (so the operator, the serving side and the CLI reject it too).
Tests evaluate both on the same invalid examples.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "glmserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
ResourceName = Annotated[
    str, Field(pattern=DNS_LABEL, max_length=63, description="a DNS-1123 label: lowercase letters, digits and '-'")
]


def cel(rule: str, message: str) -> dict[str, str]:
    return {"rule": rule, "message": message}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class Spec(BaseModel):
    """camelCase on the wire (Kubernetes convention), snake_case in Python; unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The form stored in Kubernetes: camelCase, JSON types, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(Spec):
    """A `metav1.Condition`: the latest observation of one aspect of the object's state."""

    type: str = Field(max_length=316, description="the aspect observed, e.g. Ready")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
        description="a CamelCase word for the last transition, for machines",
    )
    message: str = Field("", max_length=32768, description="details of the last transition, for humans")
    last_transition_time: str = Field(description="when status last changed (RFC 3339)")
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation this was computed from")
